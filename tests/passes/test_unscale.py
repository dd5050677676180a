"""Channel scaling taken back where the plan leaves its tensor float (passes/unscale.py, steps/unscale.py):
the model as it was, byte for byte, where every edit is idle; only the idle ones otherwise."""

import numpy as np
import onnx
from checks import run
from models import channel_absmax, hswish_net, write_batches

from qcli import QuantConfig, quantize
from qcli.core.plan import ActivationQuant, QuantPlan
from qcli.passes import channel_scale, conv_out_scale, unscale


def _scaled(m: onnx.ModelProto) -> list[unscale.ScalingEdit]:
    x = np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    edits: list = []
    conv_out_scale.scale_outputs(m, channel_absmax(m, x, ("c1", "c2")), 4.0, edits)
    channel_scale.scale_channels(m, channel_absmax(m, x, ("h1", "h2")), 4.0, edits)
    return edits


def _plan(*quantized: str) -> QuantPlan:
    return QuantPlan("w8a8", activations={t: ActivationQuant(t, 0.1, 0, "uint8") for t in quantized})


def test_every_edit_idle_gives_the_model_back_byte_for_byte():
    m, original = hswish_net(), hswish_net()
    edits = _scaled(m)
    assert len(edits) == 4 and sum(n.op_type == "Mul" for n in m.graph.node) == 4
    unscale.undo(m, unscale.idle(edits, _plan()))
    del m.graph.initializer[:]  # the scaled copies: the rewrite drops unused initializers
    m.graph.initializer.extend(t for t in hswish_net().graph.initializer)
    assert m.graph.SerializeToString() == original.graph.SerializeToString()


def test_the_weights_come_back_from_their_copies_not_by_division():
    m, original = hswish_net(), hswish_net()
    unscale.undo(m, unscale.idle(_scaled(m), _plan()))
    for t in original.graph.initializer:
        kept = next(u for u in m.graph.initializer if u.name == t.name)
        assert kept.SerializeToString() == t.SerializeToString(), t.name


def test_an_edit_whose_tensor_is_quantized_stays_and_the_model_computes_the_same():
    m = hswish_net()
    x = np.random.default_rng(5).standard_normal((2, 3, 12, 12)).astype(np.float32)
    before = run(m, {"x": x})[0]
    edits = _scaled(m)
    h2 = next(e for e in edits if e.original == "h2")  # channel_scale's: the pointwise conv reads its Mul
    # conv_out_scale's edit of dw scales dw's weight rows, and h1's edit dw's weight columns: shared, both stay
    idle = unscale.idle(edits, _plan(h2.quantized, next(e for e in edits if e.original == "h1").quantized))
    assert [e.original for e in idle] == ["c1"]
    unscale.undo(m, idle)
    muls = [n.name for n in m.graph.node if n.op_type == "Mul"]
    assert sorted(muls) == sorted(e.mul for e in edits if e not in idle)
    np.testing.assert_allclose(run(m, {"x": x})[0], before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_a_model_written_float_is_the_float_model(tmp_path):
    """The accuracy target met only by keeping everything float: the written model carries no scaling Mul
    and computes what the input does, exactly."""
    onnx.save(hswish_net(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(4, 3, 12, 12)] * 6, seed=1)
    config = QuantConfig.of(placement="static", accuracy_guard=False, exclude=("conv1", "dw", "pw"))
    r = quantize(tmp_path / "m.onnx", config, tmp_path / "c", tmp_path / "q.onnx")
    assert r.report.calibration["conv_outputs_scaled"]  # scaled while planning
    written = onnx.load(tmp_path / "q.onnx")
    assert [n.op_type for n in written.graph.node] == ["Conv", "HardSwish", "Conv", "HardSwish", "Conv"]
    assert not any(d.op_type == "Mul" for d in r.plan.nodes)
    assert any(n.startswith("channel scaling taken back at 4 of 4") for n in r.report.notes)
    x = np.random.default_rng(3).standard_normal((2, 3, 12, 12)).astype(np.float32)
    assert np.array_equal(run(written, {"x": x})[0], run(hswish_net(), {"x": x})[0])


def test_the_steps_candidates_are_written_as_the_model_will_be():
    """trials.QdqWriter (what the guard, placement, refit and bias correction measure and time) takes the idle
    edits back too: a candidate with every scaled tensor float carries no scaling Mul."""
    from qcli.steps.trials import QdqWriter

    m = hswish_net()
    edits = _scaled(m)
    written = QdqWriter(tuple(edits))(m, _plan())
    assert [n.op_type for n in written.graph.node] == ["Conv", "HardSwish", "Conv", "HardSwish", "Conv"]
    assert sum(n.op_type == "Mul" for n in m.graph.node) == 4  # the float model itself is not edited
