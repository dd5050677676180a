"""Channel scaling around HardSwish (channel_scale.py after it, conv_out_scale.py before it): exact in float,
the quantized tensors' channels brought together, and the int8 model measured better for it (--equalize)."""

import numpy as np
import onnx
import pytest
from checks import batches_of, run, sqnr_on
from models import channel_absmax, hswish_net, model_of, vi, write_batches
from onnx import helper

from qcli import QuantConfig, quantize
from qcli.passes import channel_scale, conv_out_scale


def test_conv_outputs_scaled_before_the_activation_compute_the_same():
    m = hswish_net()
    x = np.random.default_rng(2).standard_normal((4, 3, 12, 12)).astype(np.float32)
    before = run(m, {"x": x})[0]
    assert sorted(conv_out_scale.targets(m)) == ["c1", "c2"]  # pw's output is the graph's: not a target
    absmax = channel_absmax(m, x, ("c1", "c2"))
    done = conv_out_scale.scale_outputs(m, absmax)
    assert [d.conv for d in done] == ["conv1", "dw"] and all(d.spread_after == pytest.approx(1, abs=0.01) for d in done)
    np.testing.assert_allclose(run(m, {"x": x})[0], before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_the_float_model_computes_the_same_and_the_channels_come_together():
    m = hswish_net()
    x = np.random.default_rng(1).standard_normal((4, 3, 12, 12)).astype(np.float32)
    before = run(m, {"x": x})[0]
    assert sorted(channel_scale.targets(m)) == ["h1", "h2"]
    absmax = channel_absmax(m, x, ("h1", "h2"))
    done = channel_scale.scale_channels(m, absmax)
    assert [d.tensor for d in done] == ["h1", "h2"] and all(d.spread_after < d.spread_before / 4 for d in done)
    assert [n.op_type for n in m.graph.node].count("Mul") == 2
    np.testing.assert_allclose(run(m, {"x": x})[0], before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    depthwise = next(d for d in done if d.tensor == "h1")  # depthwise reader: every channel to the median's
    assert depthwise.spread_after == pytest.approx(1.0, abs=0.01)


def test_equalize_measures_better_at_int8(tmp_path):
    onnx.save(hswish_net(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(4, 3, 12, 12)] * 6, seed=1)
    write_batches(tmp_path / "e", [(4, 3, 12, 12)] * 3, seed=7)
    base = {"reduce_range": False, "placement": "static", "accuracy_guard": False, "min_macs_per_conversion": 0}
    base["channel_scaling"] = False  # the default's (outliers from 16x) would scale this net's 40x channel too
    plain, eq = (
        quantize(tmp_path / "m.onnx", QuantConfig.of(**base, equalize=e), tmp_path / "c", tmp_path / f"{e}.onnx")
        for e in (False, True)
    )
    assert [x["tensor"] for x in eq.report.calibration["channel_scaled"]] == ["h1", "h2"]
    assert any(n.startswith("channel scaling: 2 activation(s) with a channel at 4x") for n in eq.report.notes)
    unseen = batches_of(tmp_path / "e")
    plain_db, eq_db = (sqnr_on(tmp_path / "m.onnx", r.output, unseen) for r in (plain, eq))
    # measured 14.4 -> 27.7 dB (with only the tensors after HardSwish scaled: 15.8 dB; each conv's own output,
    # which the int8 conv writes quantized before the float HardSwish, kept its outlier channel)
    assert eq_db > plain_db + 10, (plain_db, eq_db)
    assert [x["conv"] for x in eq.report.calibration["conv_outputs_scaled"]] == ["conv1", "dw"]


def test_by_default_only_outlier_channels_are_scaled(tmp_path):
    """Without --equalize only tensors with a channel at 16x the median one are scaled: this net's conv
    outputs (the 40x and 30x gains) are; --no-channel-scaling leaves the model as it is."""
    onnx.save(hswish_net(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(4, 3, 12, 12)] * 6, seed=1)
    write_batches(tmp_path / "e", [(4, 3, 12, 12)] * 3, seed=7)
    base = {"reduce_range": False, "placement": "static", "accuracy_guard": False, "min_macs_per_conversion": 0}
    on, off = (
        quantize(tmp_path / "m.onnx", QuantConfig.of(**base, channel_scaling=c), tmp_path / "c", tmp_path / f"{c}.onnx")
        for c in (True, False)
    )
    scaled = on.report.calibration["conv_outputs_scaled"]
    assert scaled and all(x["spread_before"] >= channel_scale.OUTLIER_SPREAD for x in scaled)
    assert all(x["spread_before"] >= channel_scale.OUTLIER_SPREAD for x in on.report.calibration["channel_scaled"])
    assert "conv_outputs_scaled" not in off.report.calibration
    assert any(d.reason and "channel scaling" in d.reason.text for d in on.plan.nodes if d.op_type == "Mul")
    unseen = batches_of(tmp_path / "e")
    assert sqnr_on(tmp_path / "m.onnx", on.output, unseen) > sqnr_on(tmp_path / "m.onnx", off.output, unseen) + 6


def test_a_dead_channel_keeps_scale_1_and_the_widest_is_clamped_at_256x():
    """conv (3 -> 4) -> HardSwish: channel 0 always 0 (zero weights and bias), channel 3 1000x the others.
    The dead channel's scale is exactly 1; the wide one is divided by 256 at most (spread 1000 -> about 3.9)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    w[0] = 0
    w[3] *= 1000
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("HardSwish", ["c"], ["y"], name="hs"),
    ]
    m = model_of(nodes, [vi("x", ["N", 3, 5, 5])], [vi("y", ["N", 4, 5, 5])], {"w": w})
    x = rng.uniform(0.5, 1.5, (2, 3, 5, 5)).astype(np.float32)
    before = run(m, {"x": x})[0]
    absmax = channel_absmax(m, x, ("c",))
    (done,) = conv_out_scale.scale_outputs(m, absmax)
    scale = next(t for t in m.graph.initializer if t.name.startswith("c_scale"))
    s = onnx.numpy_helper.to_array(scale).reshape(-1)
    live = absmax["c"][1:]
    assert s[0] == 1.0 and s[3] == 256.0
    assert done.spread_after == pytest.approx(absmax["c"][3] / 256 / np.median(live / s[1:]), rel=1e-5)
    np.testing.assert_allclose(run(m, {"x": x})[0], before, rtol=1e-4, atol=1e-3)
