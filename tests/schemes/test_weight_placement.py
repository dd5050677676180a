"""Measured placement for the weight-only schemes (weight_placement.py): where the form --format auto chose runs
slower than FP32, weight groups (same shape, smallest first) are timed back to float and kept float where the
model gets faster; still slower than FP32, nothing is quantized. Timings are stand-ins (tests never depend on
the machine's speed); what is checked is the plan, the file written and the report."""

import numpy as np
import onnx
from checks import ops
from models import mlp, write_batches

from qcli import QuantConfig, quantize
from qcli.core.plan import Action, Why
from qcli.schemes.weight_only import placement as weight_placement
from qcli.schemes.weight_only import timing as form_timing


def _files(tmp_path):
    onnx.save(mlp(opset=17, k=64, hidden=128), tmp_path / "m.onnx")  # mm1: 64x128, mm2: 128x10
    write_batches(tmp_path / "e", [(2, 8, 64)] * 3, seed=7)
    return tmp_path / "m.onnx"


def _stand_ins(monkeypatch, group_ratios: dict[str, float], vs_fp32: float):
    """Every form 2x FP32 in --format auto's timing; a group's file (group0: the smallest weights) timed at
    its ratio to the best plan so far, the best plan at vs_fp32 to the FP32 model."""
    speed = {"float": 10.0, "qdq": 21.0, "ort-fp32": 20.0, "ort-int8": 22.0}
    monkeypatch.setattr(form_timing, "interleaved", lambda s, f, b: ({n: [speed[n] / 1e3] * 5 for n in s}, 5))
    calls = []

    def ratio_of(a, b, feed, in_turn=False, runs=None):
        calls.append(b.name)
        return vs_fp32 if a.name == "m.onnx" else group_ratios[b.name]

    monkeypatch.setattr(weight_placement, "ratio_of", ratio_of)
    return calls


def _run(tmp_path, **kw):
    config = QuantConfig.of(**{"scheme": "w4a16", **kw})
    return quantize(_files(tmp_path), config, None, tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)


def test_the_group_that_pays_goes_float_the_other_stays_int4(tmp_path, monkeypatch):
    calls = _stand_ins(monkeypatch, {"group0.onnx": 0.80, "group1.onnx": 0.99}, vs_fp32=0.97)
    r = _run(tmp_path)
    # smallest first, each at batch 1 and 8 (a move that pays timed again); then the best vs FP32
    assert calls == ["group0.onnx"] * 4 + ["group1.onnx"] * 2 + ["group0.onnx"] * 2
    mm2, mm1 = r.plan.decision("mm2"), r.plan.decision("mm1")
    assert mm2.action == Action.FLOAT and mm2.why == Why.MEASURED and "128x10" in mm2.reason.text
    assert mm1.action == Action.INT4_WEIGHT
    assert [w.node for w in r.plan.weights] == ["mm1"]
    written = ops(tmp_path / "q.onnx")
    assert written.get("MatMul", 0) + written.get("MatMulNBits", 0) == 2 and written.get("DequantizeLinear", 0) <= 1
    y = onnx.numpy_helper.to_array(
        next(t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if t.name == "w2")
    )
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert any(np.array_equal(onnx.numpy_helper.to_array(t), y) for t in q.graph.initializer)  # w2 written float
    assert r.report.placement["timed"][0]["kept"] and not r.report.placement["timed"][1]["kept"]
    assert list(r.report.weight_errors) == ["w1"]  # errors only for the weights still quantized
    assert any("1 weight op(s) kept float" in w for w in r.report.warnings)


def test_still_slower_than_fp32_writes_the_weights_float_and_says_so(tmp_path, monkeypatch):
    _stand_ins(monkeypatch, {"group0.onnx": 1.0, "group1.onnx": 1.0}, vs_fp32=1.5)
    r = _run(tmp_path)
    assert r.plan.weights == [] and {r.plan.decision(n).action for n in ("mm1", "mm2")} == {Action.FLOAT}
    assert "DequantizeLinear" not in ops(tmp_path / "q.onnx") and "MatMulNBits" not in ops(tmp_path / "q.onnx")
    assert any("no weight-only placement tried made this model faster" in w for w in r.report.warnings)


def test_objective_size_and_static_placement_keep_every_weight_quantized(tmp_path, monkeypatch):
    for kw in ({"objective": "size"}, {"placement": "static"}):
        calls = _stand_ins(monkeypatch, {"group0.onnx": 0.5, "group1.onnx": 0.5}, vs_fp32=1.5)
        r = _run(tmp_path, **kw)
        assert calls == [] and len(r.plan.weights) == 2, kw
        assert any("runs 2.00x FP32 at batch 1 on this CPU" in w for w in r.report.warnings)  # the warning instead
