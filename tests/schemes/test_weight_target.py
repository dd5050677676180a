"""An accuracy target with the weight-only schemes (weight_target.py): w4a16 raises the fewest weights to 8-bit
blocks, ranked by the noise each MatMul adds (matched by name through MatMulNBits, which onnx cannot type);
w8a16 returns them to float. Measured on a chain whose middle weight has one outlier row per block (every
block's 4-bit step 25x too coarse): all 4-bit 15.6 dB, mm2 at 8 bits 19.3 dB, all three 38.3 dB."""

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
from models import model_of, vi, write_batches
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.cli.app import app
from qcli.core.errors import GateFailed, InputError
from qcli.core.plan import Action, Why, reason
from qcli.schemes.weight_only.planner import plan_w4a16
from qcli.schemes.weight_only.target import UNITS, Quantized, promoted, sizes
from qcli.schemes.weight_only.timing import Timings
from qcli.weights import WeightOptions


def _chain():
    rng = np.random.default_rng(3)
    w = {f"w{i}": (rng.standard_normal((64, 64)) / 8).astype(np.float32) for i in (1, 2, 3)}
    w["w2"][::32, :] *= 25
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="r1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="r2"),
        helper.make_node("MatMul", ["a2", "w3"], ["y"], name="mm3"),
    ]
    return model_of(nodes, [vi("x", ["N", 64])], [vi("y", ["N", 64])], w)


@pytest.fixture
def files(tmp_path):
    onnx.save(_chain(), tmp_path / "m.onnx")
    write_batches(tmp_path / "e", [(16, 64)] * 3, seed=7)
    return tmp_path


def _q(files, out="q.onnx", **kw):
    config = QuantConfig.of(**{"scheme": "w4a16", "weight_format": "ort", **kw})
    return quantize(files / "m.onnx", config, None, files / out, files / "e", latency_runs=1)


def _bits(path):
    return {
        n.name: next(a.i for a in n.attribute if a.name == "bits")
        for n in onnx.load(str(path)).graph.node
        if n.op_type == "MatMulNBits"
    }


def test_promoted_raises_int4_to_int8_and_int8_to_float():
    m = _chain()
    plan = plan_w4a16(m, QuantConfig.of(scheme="w4a16", weight_symmetric_int4=False))
    up = promoted(plan, {"mm2": reason(Why.TARGET, rank=1)})
    assert up.decision("mm2").action == Action.INT8_WEIGHT and "8-bit blocks" in up.decision("mm2").reason.text
    assert {w.node: w.qtype for w in up.weights} == {"mm1": "uint4", "mm2": "uint8", "mm3": "uint4"}
    assert plan.decision("mm2").action == Action.INT4_WEIGHT  # the first plan is left as it was
    w8 = plan_w4a16(m, QuantConfig.of(scheme="w8a16"))
    down = promoted(w8, {"mm1": reason(Why.TARGET, rank=1)})
    assert down.decision("mm1").action == Action.FLOAT and "mm1" not in {w.node for w in down.weights}


def test_w4a16_target_raises_the_outlier_weight_to_8_bits_and_meets_it(files):
    plain = _q(files, "plain.onnx")
    assert plain.report.fidelity[0].sqnr_db < 16.5 and plain.report.target is None
    r = _q(files, min_sqnr=18)
    t = r.report.target
    assert t["met"] and t["raised_to_8_bits"] == ["mm2"]
    assert r.report.fidelity[0].sqnr_db >= 18
    assert _bits(files / "q.onnx") == {"mm1": 4, "mm2": 8, "mm3": 4}
    assert r.plan.decision("mm2").action == Action.INT8_WEIGHT and r.report.float_for_accuracy == []
    md = (files / "q.onnx.report.md").read_text()
    assert "1 node(s) at 8-bit blocks" in md


def test_w4a16_target_in_the_portable_form_writes_8_bit_blocks_there_too(files):
    r = _q(files, weight_format="qdq", min_sqnr=18)
    q = onnx.load(str(files / "q.onnx"))
    by_name = {t.name: t.data_type for t in q.graph.initializer}
    dq_types = sorted(by_name[n.input[0]] for n in q.graph.node if n.op_type == "DequantizeLinear")
    assert dq_types == sorted([TensorProto.INT4, TensorProto.INT4, TensorProto.INT8])
    assert r.report.fidelity[0].sqnr_db >= 18


def test_w8a16_target_returns_weights_to_float(files):
    r = _q(files, scheme="w8a16", min_sqnr=200)  # 8-bit blocks are good, but not 200 dB: all back to float
    t = r.report.target
    assert set(t["returned_to_float"]) == {"mm1", "mm2", "mm3"} and t["met"]
    assert _bits(files / "q.onnx") == {} and set(r.report.float_for_accuracy) == {"mm1", "mm2", "mm3"}


def test_an_unreachable_target_writes_the_best_model_and_exits_1(files):
    with pytest.raises(GateFailed, match="at 8-bit blocks"):
        _q(files, min_sqnr=60)
    assert json.loads((files / "q.onnx.report.json").read_text())["target"]["met"] is False
    args = ["quantize", str(files / "m.onnx"), "--scheme", "w4a16", "--eval", str(files / "e"), "--min-sqnr", "60"]
    res = CliRunner().invoke(app, [*args, "-o", str(files / "q2.onnx")])
    assert res.exit_code == 1, res.output
    t = json.loads((files / "q2.onnx.report.json").read_text())["target"]
    assert t["met"] is False and sorted(t["raised_to_8_bits"]) == ["mm1", "mm2", "mm3"]  # the most accurate tried


def test_a_target_without_data_is_refused(files):
    with pytest.raises(InputError, match="pass --eval"):
        quantize(files / "m.onnx", QuantConfig.of(scheme="w4a16", min_sqnr=20), out=files / "q.onnx")
    res = CliRunner().invoke(app, ["quantize", str(files / "m.onnx"), "--scheme", "w4a16", "--min-sqnr", "20"])
    assert res.exit_code == 2 and "pass --eval" in res.output


def test_ranking_with_a_cost_puts_the_most_noise_per_weight_element_first(files, monkeypatch):
    """Stand-in per-layer figures: mm1 adds twice mm2's noise but reads a weight 10x larger; with the weight
    sizes as the cost mm2 goes first (half the noise for a tenth of the bytes), without them mm1 does."""
    from qcli.io.feeds import FeedSource, FidelityData, input_specs
    from qcli.measure.layers import LayerError
    from qcli.steps import trials

    figures = [LayerError("h1", "mm1", "MatMul", 20.0, 0.02), LayerError("h2", "mm2", "MatMul", 23.0, 0.01)]
    monkeypatch.setattr(trials, "per_layer", lambda ref, cand, batches: figures)
    m = _chain()
    plan = plan_w4a16(m, QuantConfig.of(scheme="w4a16"))
    src = FeedSource(files / "e", input_specs(m))
    data = FidelityData(src, src.items, "")
    write = Quantized(None, WeightOptions()).write_exact
    costs = {"mm1": 40960.0, "mm2": 4096.0, "mm3": 4096.0}
    with trials.trials(m, files / "m.onnx", data, lambda: None, write, UNITS, costs.get) as t:
        assert t.rank_units(plan)[:2] == [["mm2"], ["mm1"]]
    with trials.trials(m, files / "m.onnx", data, lambda: None, write, UNITS) as t:
        assert t.rank_units(plan)[:2] == [["mm1"], ["mm2"]]
    assert sizes(m, plan) == {"mm1": 4096.0, "mm2": 4096.0, "mm3": 4096.0}


def _meter(signal: float, noise: float):
    from qcli.core.qparams import NoiseMeter

    m = NoiseMeter()
    m.signal, m.noise = signal, noise
    return m


def test_auto_format_keeps_the_target_a_faster_form_would_miss():
    """The exact math meets the target (20 dB); the int8-compute form is faster and within the usual margin of
    the exact math, but against FP32 it lands at 18.9 dB: with --min-sqnr 19 it is rejected."""
    from qcli.schemes.weight_only import formats as wf

    fid = wf._Fidelity(
        quantization={"y": _meter(100.0, 1.0)},  # exact vs FP32: 20 dB
        deviation={
            "qdq": {"y": _meter(1.0, 0.0)},
            "ort-fp32": {"y": _meter(1.0, 0.0)},
            "ort-int8": {"y": _meter(100, 0.02)},
        },
        flips={"qdq": 0, "ort-fp32": 0, "ort-int8": 0},
        vs_float={c: {"y": _meter(100.0, 1.0)} for c in ("qdq", "ort-fp32")} | {"ort-int8": {"y": _meter(100.0, 1.3)}},
    )
    times = Timings({8: {"float": [10e-3] * 5, "qdq": [9e-3] * 5, "ort-fp32": [9.5e-3] * 5, "ort-int8": [5e-3] * 5}})
    assert wf._decide(wf.CANDIDATES, fid, times).accuracy_level == wf.INT8
    kept = wf._decide(wf.CANDIDATES, fid, times, min_sqnr=19.0)
    assert kept.weight_format.value == "qdq" and "misses --min-sqnr 19" in kept.why


def test_a_written_model_that_misses_the_target_the_search_met_exits_1(files, monkeypatch):
    """The search measures the exact math; the final measurement is of the file written. A stand-in that
    lowers the final figure by 3 dB (as a less exact form would) must turn a met search into exit code 1."""
    from qcli import pipeline

    real = pipeline.measure

    def lower(report, *args, **kw):
        real(report, *args, **kw)
        report.fidelity = [replace(f, sqnr_db=f.sqnr_db - 3.0) for f in report.fidelity]

    monkeypatch.setattr(pipeline, "measure", lower)
    with pytest.raises(GateFailed, match="not met by the model written"):
        _q(files, min_sqnr=18)
    assert json.loads((files / "q.onnx.report.json").read_text())["target"]["met"] is True  # the search's verdict


def _int8_fastest(monkeypatch):
    """Stand-in timings: ort-int8 (MatMulNBits at int8 compute) the fastest form on this 'CPU'."""
    from qcli.schemes.weight_only import formats as wf

    ms = {"float": 10.0, "qdq": 9.0, "ort-fp32": 12.0, "ort-int8": 5.0}
    monkeypatch.setattr(wf, "timed", lambda *a: Timings({8: {k: [ms[k] / 1e3] * 5 for k in ms}}, 5))


def _levels_written(monkeypatch) -> list[set[int]]:
    """The MatMulNBits accuracy levels of every model the search's trials write (a missing attribute is 0)."""
    from qcli.steps import trials

    seen = []

    def write(self, plan, name="candidate.onnx"):
        model = self.apply(self.model, plan)
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        seen.append({next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in nbits})
        return trials.model_io.save_for_session(model, self.tmp, name)

    monkeypatch.setattr(trials.Trials, "write", write)
    return seen


def test_auto_searches_in_the_fastest_form_and_writes_it(files, monkeypatch):
    """Under --format auto the target is searched in the form timed fastest on the first plan (int8 compute
    here), so the written model is that form and meets the target; the decisions reach the report."""
    _int8_fastest(monkeypatch)
    seen = _levels_written(monkeypatch)
    r = _q(files, weight_format="auto", min_sqnr=18)
    t = r.report.target
    assert t["met"] and "mm2" in t["raised_to_8_bits"] and t["measured_as"].startswith("ort-int8")
    assert seen and all(levels == {4} for levels in seen)  # every candidate written at int8 compute
    assert r.report.decisions["weight_format"]["value"] == "ort"
    assert r.report.decisions["accuracy_level"]["value"] == 4
    nodes = onnx.load(str(files / "q.onnx")).graph.node
    assert {a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"} == {4}
    assert r.report.fidelity[0].sqnr_db >= 18
    assert "decided weight format | ort" in (files / "q.onnx.report.md").read_text()


def test_auto_searches_the_exact_math_when_the_fast_form_cannot_meet_it(files, monkeypatch):
    """The fast form's search ends unmet (a stand-in: its target made unreachable): the search runs again in the
    exact math (fp32 compute), which meets it."""
    from qcli.schemes.weight_only import steps as weight_only
    from qcli.steps.target import AccuracyTarget

    _int8_fastest(monkeypatch)
    calls, real = [], weight_only.search

    def first_unreachable(model, ref, plan, replan, target, *a):
        calls.append(target)
        return real(model, ref, plan, replan, AccuracyTarget(1000.0) if len(calls) == 1 else target, *a)

    monkeypatch.setattr(weight_only, "search", first_unreachable)
    r = _q(files, weight_format="auto", min_sqnr=18)
    assert len(calls) == 2
    t = r.report.target
    assert t["met"] and t["measured_as"].startswith("the exact math") and t["raised_to_8_bits"] == ["mm2"]
    assert r.report.fidelity[0].sqnr_db >= 18


def test_a_target_replaces_the_margin_to_the_exact_math():
    """w8a16-like figures: the exact math is 35 dB from FP32, int8 compute 30 dB from the exact math (under the
    6 dB margin: rejected without a target). --min-sqnr 25 accepts it (29.6 dB against FP32); --min-sqnr 30 does
    not; argmax flips beyond the fp32-compute form's reject it whatever the target."""
    from qcli.schemes.weight_only import formats as wf

    def fid(flips: int):
        return wf._Fidelity(
            quantization={"y": _meter(10**3.5, 1.0)},
            deviation={"qdq": {"y": _meter(1e3, 1.0)}, "ort-fp32": {"y": _meter(1.0, 0.0)}}
            | {"ort-int8": {"y": _meter(1e3, 1.0)}},
            flips={"qdq": flips, "ort-fp32": 0, "ort-int8": flips},
            vs_float={"ort-fp32": {"y": _meter(10**3.5, 1.0)}}
            | {c: {"y": _meter(10**2.96, 1.0)} for c in ("qdq", "ort-int8")},
        )

    times = Timings({8: {"float": [10e-3] * 5, "qdq": [9e-3] * 5, "ort-fp32": [20e-3] * 5, "ort-int8": [5e-3] * 5}})
    assert wf._decide(wf.CANDIDATES, fid(0), times).accuracy_level == wf.FP32
    assert wf._decide(wf.CANDIDATES, fid(0), times, min_sqnr=25.0).accuracy_level == wf.INT8
    assert wf._decide(wf.CANDIDATES, fid(0), times, min_sqnr=30.0).accuracy_level == wf.FP32
    assert wf._decide(wf.CANDIDATES, fid(3), times, min_sqnr=25.0).accuracy_level == wf.FP32


def test_w8a16_target_is_searched_in_the_fastest_form_even_off_the_margin(files, monkeypatch):
    """w8a16's int8 compute is further from the exact math than the 6 dB margin allows; with a target the
    search still measures in it (the target, not the margin, judges), and the written model is that form."""
    _int8_fastest(monkeypatch)
    r = _q(files, scheme="w8a16", weight_format="auto", min_sqnr=30)
    assert r.report.target["measured_as"].startswith("ort-int8") and r.report.target["met"]
    assert r.report.decisions["accuracy_level"]["value"] == 4 and r.report.fidelity[0].sqnr_db >= 30
