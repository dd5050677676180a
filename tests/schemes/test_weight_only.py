"""Weight-only schemes beyond the int4 MatMul basics (test_plan_w4a16.py): embedding tables (Gather), w8a16,
tied tables, and --format auto (weight_format.py).

Oracles: `expected_blocks`, the blocked round trip recomputed in numpy for 4 and 8 bits; onnx.reference and
onnxruntime with graph optimizations off (the exact dequantized math); onnxruntime's fused graph (which kernels
run). The auto tests never depend on which form is faster here: they check what is measured and the verdicts
on fidelity, and the decision rule on given numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from checks import fused_ops, ops, run, sqnr
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcli import QuantConfig, Scheme, quantize
from qcli.core.config import WeightFormat
from qcli.core.plan import Action, Why
from qcli.core.qparams import NoiseMeter
from qcli.passes.blockwise import apply_weight_only
from qcli.schemes.weight_only import formats as wf
from qcli.schemes.weight_only.planner import plan_w4a16
from qcli.schemes.weight_only.timing import MIN_RUNS, Timings

W4, W8 = Scheme.W4A16, Scheme.W8A16


def expected_blocks(w: np.ndarray, block: int, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Blocked round trip of a [K, N] weight along K, in numpy: symmetric blocks put their signed extreme on
    the lowest code; asymmetric ones span [min(lo, 0), max(hi, 0)] with a rounded zero point. (values, codes)"""
    half = 1 << (bits - 1)
    qmin, qmax = (-half, half - 1) if symmetric else (0, 2 * half - 1)
    w = w.astype(np.float32)
    deq, codes = np.empty_like(w), np.empty(w.shape, np.int64)
    for b0 in range(0, w.shape[0], block):
        blk = w[b0 : b0 + block]
        lo, hi = blk.min(axis=0), blk.max(axis=0)
        if symmetric:
            scale = (np.where(np.abs(lo) >= np.abs(hi), lo, hi) / np.float32(qmin)).astype(np.float32)
            scale = np.where(scale != 0, scale, np.float32(1)).astype(np.float32)
            zp = np.zeros(scale.shape)
        else:
            lo64, hi64 = np.minimum(lo, 0).astype(np.float64), np.maximum(hi, 0).astype(np.float64)
            s64 = np.where(hi64 > lo64, (hi64 - lo64) / qmax, 1.0)
            zp, scale = np.clip(np.rint(-lo64 / s64), 0, qmax), s64.astype(np.float32)
        q = np.clip(np.rint(blk / scale) + zp, qmin, qmax)
        codes[b0 : b0 + block] = q
        deq[b0 : b0 + block] = ((q - zp).astype(np.float32) * scale).astype(np.float32)
    return deq, codes


def _model(nodes, inputs, outputs, inits: dict, opset=21):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 21 else 8
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _w(shape, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _x(shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


IDS = np.array([[0, 299, -1, 17], [5, 5, -300, 123]], np.int64)


def embed_model(rows=300, d=96, opset=21):
    """Gather(E, ids) -> MatMul(W): a token embedding and a projection; Shape -> Gather on an int64 constant
    (shape arithmetic, not a table)."""
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="emb"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="proj"),
        helper.make_node("Shape", ["ids"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="dim0"),
    ]
    inits = {"E": _w((rows, d)), "W": _w((d, 32), 1), "zero": np.array(0, np.int64)}
    outs = [_vi("y", ["B", "T", 32]), _vi("n", [], TensorProto.INT64)]
    return _model(nodes, [_vi("ids", ["B", "T"], TensorProto.INT64)], outs, inits, opset)


def _plan(m, scheme=W4, **cfg):
    return plan_w4a16(m, QuantConfig.of(scheme=scheme, **cfg))


def ops_of(model) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _quantize(tmp_path, m, **cfg):
    onnx.save(m, tmp_path / "f.onnx")
    cfg.setdefault("weight_format", "qdq")
    cfg.setdefault("scheme", W4)
    return quantize(tmp_path / "f.onnx", QuantConfig.of(**cfg), out=tmp_path / "q.onnx", latency_runs=2)


# ------------------------------------------------------------------------------------------------ planner


def test_a_constant_float_table_read_by_gather_is_planned_in_blocks_along_its_rows():
    """The table: weight-only, input 0, blocks along D (axis 1); the Gather on shape arithmetic is no candidate."""
    plan = _plan(embed_model())
    emb = next(w for w in plan.weights if w.node == "emb")
    assert (emb.input_index, emb.tensor, emb.role, emb.axis, emb.qtype) == (0, "E", "embedding", 1, "int4")
    assert plan.decision("emb").action == Action.INT4_WEIGHT
    assert plan.decision("dim0").action == Action.FLOAT and plan.decision("dim0").reason is None
    assert [w.node for w in plan.weights] == ["emb", "proj"]


def _table(shape, axis=0):
    node = helper.make_node("Gather", ["E", "ids"], ["y"], name="emb", axis=axis)
    return _model([node], [_vi("ids", ["N"], TensorProto.INT64)], [_vi("y", None)], {"E": _w(shape)})


REFUSED = {
    "rank-3": (_table((4, 10, 64)), "rank 3"),
    "gather-axis-1": (_table((64, 64), axis=1), "axis 1"),
    "rows-shorter-than-a-block": (_table((64, 16)), "shorter than one block"),
}


@pytest.mark.parametrize("m,text", REFUSED.values(), ids=REFUSED.keys())
def test_tables_that_cannot_be_blocked_stay_float_and_say_why(m, text):
    """Only the too-short rows carry their length, and then nothing being quantized is a warning."""
    plan = _plan(m)
    d = plan.decision("emb")
    assert d.action == Action.FLOAT and d.why == Why.UNSUPPORTED and text in d.reason.text
    short = text == "shorter than one block"
    assert ("row_length" in d.reason.details) == short
    assert bool([w for w in plan.warnings if "--block-size 32" in w]) == short


def test_an_excluded_table_stays_float():
    d = _plan(embed_model(), exclude=("Gather",)).decision("emb")
    assert d.why == Why.EXCLUDED and d.reason.details["pattern"] == "Gather"


@pytest.mark.parametrize("symmetric,qtype", [(True, "int8"), (False, "uint8")])
def test_w8a16_plans_8_bit_blocks(symmetric, qtype):
    plan = _plan(embed_model(), W8, weight_symmetric_int4=symmetric)
    assert plan.scheme == "w8a16" and {w.qtype for w in plan.weights} == {qtype}
    assert all(plan.decision(w.node).action != Action.FLOAT for w in plan.weights)


def test_an_explicit_format_is_a_decision_and_auto_is_left_to_measure():
    assert _plan(embed_model(), weight_format="ort").decisions["weight_format"]["value"] == "ort"
    assert "weight_format" not in _plan(embed_model()).decisions


# ------------------------------------------------------------------------------------ the portable form


@pytest.mark.parametrize("k", [128, 200], ids=["K-whole-blocks", "K-200"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_w8a16_writes_8_bit_blocks_that_onnxruntime_fuses(tmp_path, k, symmetric):
    """int8 (uint8 + zero points) DequantizeLinear blocked along K = the numpy round trip; onnxruntime runs it
    as MatMulNBits even when K is not a multiple of the block; close to float (measured 45.6 .. 46.4 dB)."""
    w = _w((k, 48))
    m = _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [_vi("x", ["N", k])],
        [_vi("y", ["N", 48])],
        {"W": w},
    )
    r = _quantize(tmp_path, m, scheme=W8, weight_symmetric_int4=symmetric)
    q = onnx.load(str(r.output))
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
    want_type = TensorProto.INT8 if symmetric else TensorProto.UINT8
    assert next(t.data_type for t in q.graph.initializer if t.name == dq.input[0]) == want_type
    want, codes = expected_blocks(w, 32, 8, symmetric)
    got_codes = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == dq.input[0]))
    np.testing.assert_array_equal(got_codes.astype(np.int64), codes)
    x = _x((5, k))
    exact = run(r.output, {"x": x}, exact_qdq=True)[0]
    np.testing.assert_allclose(exact, x @ want, rtol=1e-5, atol=1e-5)
    assert fused_ops(r.output, tmp_path) == {"MatMulNBits": 1}
    assert sqnr(x @ w, exact) > 43


@pytest.mark.parametrize("scheme,bits", [(W4, 4), (W8, 8)])
def test_a_table_is_gathered_as_codes_then_dequantized(tmp_path, scheme, bits):
    """Portable embedding: Gather(codes, one per byte) and Gather(scales) -> DequantizeLinear(axis -1): the
    rows read, negative indices included, equal the numpy round trip of the table (blocks along D) exactly;
    the float table is gone and the file is under 0.3 of the float one."""
    m = embed_model()
    r = _quantize(tmp_path, m, scheme=scheme)
    q = onnx.load(str(r.output))
    assert "E" not in {t.name for t in q.graph.initializer}
    assert r.report.size["ratio"] < 0.3  # measured 0.273 (int4) and 0.285 (int8): a byte per code either way
    g = next(n for n in q.graph.node if n.name == "emb")
    codes = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == g.input[0]))
    want, want_codes = expected_blocks(numpy_helper.to_array(m.graph.initializer[0]).T, 32, bits, True)
    assert codes.dtype == np.int8 and codes.shape == (300, 96)
    np.testing.assert_array_equal(codes.astype(np.int64), want_codes.T)
    rows = ReferenceEvaluator(q).run(["h"], {"ids": IDS})[0]
    np.testing.assert_array_equal(rows, want.T[IDS])
    got = run(r.output, {"ids": IDS}, exact_qdq=True)[0]
    w_deq = expected_blocks(numpy_helper.to_array(m.graph.initializer[1]), 32, bits, True)[0]
    np.testing.assert_allclose(got, want.T[IDS] @ w_deq, rtol=0, atol=1e-6)


def test_a_tied_table_quantizes_both_readers_from_the_same_rows(tmp_path):
    """Gather(E) and Gemm(h, E, transB=1): both readers quantized (the float table is gone) to the same values
    (blocks along D), the projection fused into MatMulNBits; exact math = numpy's rows and products."""
    e = _w((200, 64))
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="emb"),
        helper.make_node("Reshape", ["h", "shape"], ["h2"], name="flat"),
        helper.make_node("Gemm", ["h2", "E"], ["logits"], name="head", transB=1),
    ]
    inits = {"E": e, "shape": np.array([-1, 64], np.int64)}
    m = _model(nodes, [_vi("ids", ["B", "T"], TensorProto.INT64)], [_vi("logits", ["BT", 200])], inits)
    r = _quantize(tmp_path, m)
    assert {w.node for w in r.plan.weights} == {"emb", "head"}
    q = onnx.load(str(r.output))
    assert "E" not in {t.name for t in q.graph.initializer}
    deq = expected_blocks(e.T, 32, 4, True)[0].T  # [200, 64], blocks along the rows
    ids = np.array([[1, 199, 42]], np.int64)
    np.testing.assert_allclose(run(r.output, {"ids": ids}, exact_qdq=True)[0], deq[ids[0]] @ deq.T, atol=1e-5)
    assert fused_ops(r.output, tmp_path).get("MatMulNBits") == 1


# ----------------------------------------------------------------------------------------- --format auto


def _exact_int4_mlp(seed=0):
    """Weights already on the int4 grid (each block's column extreme on -8): the quantization is exact, so
    only float rounding may separate a candidate from the exact math; the logits are class scores [N, 10]."""
    rng = np.random.default_rng(seed)
    w1 = rng.integers(-7, 8, (64, 64)).astype(np.float32) * np.float32(0.125)
    w1[::32] = -1.0  # the -8 code of every block and column
    w2 = rng.integers(-7, 8, (64, 10)).astype(np.float32) * np.float32(0.25)
    w2[::32] = -2.0
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["logits"], name="mm2"),
    ]
    return _model(nodes, [_vi("x", ["N", 64])], [_vi("logits", ["N", 10])], {"W1": w1, "W2": w2})


def test_auto_rejects_int8_compute_where_the_quantization_is_exact(tmp_path):
    """Exact weights: the exact math equals FP32, so int8 activations (ort-int8, and the qdq form, which
    onnxruntime fuses at level 4) are measurable noise and rejected; ort-fp32 is within float rounding and is
    chosen, whatever the timings. The decision, in the plan, makes apply_weight_only write MatMulNBits at level 0.
    (Assumes a CPU where onnxruntime has int8 MatMulNBits kernels: x86 with AVX2 or later, ARM with dot
    products; elsewhere level 4 falls back to fp32.)"""
    m = _exact_int4_mlp()
    onnx.save(m, tmp_path / "f.onnx")
    plan = _plan(m)
    feeds = [{"x": _x((16, 64), seed=s)} for s in range(2)]
    choice = wf.choose(m, plan, tmp_path / "f.onnx", feeds, budget_s=0.05)
    trials = {t.name: t for t in choice.trials}
    assert set(trials) == {"qdq", "ort-fp32", "ort-int8"} and choice.runs >= MIN_RUNS
    assert trials["ort-fp32"].accepted and trials["ort-fp32"].sqnr_vs_exact_db > wf.ROUNDING_DB
    assert not trials["ort-int8"].accepted and not trials["qdq"].accepted
    assert trials["ort-int8"].sqnr_vs_exact_db < wf.ROUNDING_DB and trials["ort-fp32"].rows == 32
    assert (choice.weight_format, choice.accuracy_level) == (WeightFormat.ORT, 0)
    assert choice.quantization_db == float("inf")
    plan.decisions.update(choice.decisions())
    q = apply_weight_only(m, plan)
    assert ops_of(q) == {"MatMulNBits": 2, "Relu": 1}
    assert all(not any(a.name == "accuracy_level" for a in n.attribute) for n in q.graph.node)


def test_auto_without_data_writes_matmulnbits_at_fp32_compute_and_without_weights_the_portable_form(tmp_path):
    m = _exact_int4_mlp()
    no_data = wf.choose(m, _plan(m), tmp_path / "unused.onnx", [])
    assert (no_data.weight_format, no_data.accuracy_level) == (WeightFormat.ORT, 0)  # exact, onnxruntime's form
    assert "no data" in no_data.why and not no_data.trials
    nothing = wf.choose(m, _plan(m, block_size=128), tmp_path / "unused.onnx", [{"x": _x((2, 64))}])
    assert nothing.weight_format == WeightFormat.QDQ and "nothing quantized" in nothing.why


def _meter(db: float) -> NoiseMeter:
    m = NoiseMeter()
    m.signal, m.noise = 1.0, 10 ** (-db / 10)
    return m


def _fid(quant_db: float, dev: dict[str, float], flips: dict[str, int]):
    return wf._Fidelity({"y": _meter(quant_db)}, {c: {"y": _meter(d)} for c, d in dev.items()}, flips, rows=100)


def _times(**ms):
    return Timings({8: {k: [v / 1e3] * 5 for k, v in ms.items()}}, 5)


def test_the_decision_takes_the_fastest_accepted_and_breaks_near_ties_toward_portability():
    fid = _fid(20.0, {"qdq": 40.0, "ort-fp32": 130.0, "ort-int8": 40.0}, {"qdq": 0, "ort-fp32": 0, "ort-int8": 0})
    fastest = wf._decide(wf.CANDIDATES, fid, _times(float=10, qdq=9.0, **{"ort-fp32": 8.0, "ort-int8": 6.0}))
    assert (fastest.weight_format, fastest.accuracy_level) == (WeightFormat.ORT, 4)
    near = wf._decide(wf.CANDIDATES, fid, _times(float=10, qdq=6.1, **{"ort-fp32": 8.0, "ort-int8": 6.0}))
    assert near.weight_format == WeightFormat.QDQ and near.accuracy_level is None  # 1.7% slower: a tie
    assert near.decisions()["weight_format"]["value"] == "qdq" and "accuracy_level" not in near.decisions()
    assert fastest.decisions()["accuracy_level"]["value"] == 4 and fastest.chosen_trial.timings[0].float_ms == 10


def test_the_decision_rejects_noise_near_the_quantization_noise_and_extra_argmax_flips():
    """margin: 25.9 dB deviation vs 20 dB of quantization noise is < 6 dB under it; flips: 3 rows where fp32
    compute flips 1."""
    fid = _fid(20.0, {"qdq": 25.9, "ort-fp32": 130.0, "ort-int8": 40.0}, {"qdq": 0, "ort-fp32": 1, "ort-int8": 3})
    choice = wf._decide(wf.CANDIDATES, fid, _times(float=10, qdq=5.0, **{"ort-fp32": 8.0, "ort-int8": 6.0}))
    verdict = {t.name: t for t in choice.trials}
    assert not verdict["qdq"].accepted and "needs 26.0" in verdict["qdq"].why
    assert not verdict["ort-int8"].accepted and "3 of 100 argmax rows" in verdict["ort-int8"].why
    assert (choice.weight_format, choice.accuracy_level) == (WeightFormat.ORT, 0)
    assert "qdq rejected" in choice.why and "ort-int8 rejected" in choice.why


def test_score_outputs_are_class_scores_and_final_linear_layers(tmp_path):
    """logits (MatMul + Add, rank 3) and probs (rank 2) are scores; a LayerNormalization output is not."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["logits"], name="add"),
        helper.make_node("LayerNormalization", ["x", "g"], ["hidden"], name="ln"),
        helper.make_node("ReduceMean", ["logits", "axes"], ["probs"], name="mean", keepdims=0),
    ]
    inits = {"W": _w((64, 50)), "b": _w((50,)), "g": np.ones(64, np.float32), "axes": np.array([1], np.int64)}
    outs = [_vi("logits", [2, 3, 50]), _vi("hidden", [2, 3, 64]), _vi("probs", [2, 50])]
    m = _model(nodes, [_vi("x", [2, 3, 64])], outs, inits)
    onnx.save(m, tmp_path / "m.onnx")
    assert wf.score_outputs(m, tmp_path / "m.onnx") == {"logits", "probs"}


def test_mlp_trials_measure_every_candidate_and_pick_an_accepted_one(tmp_path):
    """Ordinary weights (int4 noise 19.2 dB): ort-fp32 is float rounding away from the exact math and flips no
    argmax row; the choice is one of the accepted candidates; every candidate was timed."""
    from models import mlp

    m = mlp(opset=21)
    m.ir_version = 10
    onnx.save(m, tmp_path / "f.onnx")
    choice = wf.choose(m, _plan(m), tmp_path / "f.onnx", [{"x": _x((2, 8, 64))}], budget_s=0.05)
    t = {x.name: x for x in choice.trials}
    assert t["ort-fp32"].accepted and t["ort-fp32"].flips == 0 and t["ort-fp32"].rows == 16
    assert all(t.median_ms > 0 and t.float_ms > 0 for x in choice.trials for t in x.timings)
    chosen = next(x for x in choice.trials if (x.name == "qdq") == (choice.weight_format == WeightFormat.QDQ))
    assert chosen.accepted or choice.weight_format == WeightFormat.ORT
    assert 17 < choice.quantization_db < 22  # measured 19.2 dB
    assert ops(tmp_path / "f.onnx") == {"MatMul": 2, "Add": 2, "Relu": 1}  # the float model is untouched


def test_where_the_quantization_is_exact_float_rounding_is_the_bar():
    """Exact weights (no quantization noise, inf dB): a candidate within float rounding (>= 80 dB of the exact
    math) passes; int8 compute (measured 44.6 dB on _exact_int4_mlp) does not."""
    fid = _fid(
        float("inf"), {"qdq": 47.6, "ort-fp32": 120.0, "ort-int8": 44.6}, {"qdq": 0, "ort-fp32": 0, "ort-int8": 0}
    )
    choice = wf._decide(wf.CANDIDATES, fid, _times(float=10, qdq=5.0, **{"ort-fp32": 8.0, "ort-int8": 6.0}))
    verdict = {t.name: t for t in choice.trials}
    assert verdict["ort-fp32"].accepted and not verdict["ort-int8"].accepted and "needs 80.0" in verdict["qdq"].why
    assert (choice.weight_format, choice.accuracy_level) == (WeightFormat.ORT, 0)


def test_auto_can_measure_the_ort_levels_alone(tmp_path):
    """Only the two MatMulNBits levels (--format ort, level measured): the exact math is still the portable
    form run as written; on exact weights int8 compute is rejected, level 0 chosen, and the decision says why."""
    m = _exact_int4_mlp()
    onnx.save(m, tmp_path / "f.onnx")
    choice = wf.choose(m, _plan(m), tmp_path / "f.onnx", [{"x": _x((16, 64))}], wf.CANDIDATES[1:], budget_s=0.05)
    assert [t.name for t in choice.trials] == ["ort-fp32", "ort-int8"] and not choice.trials[1].accepted
    level = choice.decisions()["accuracy_level"]
    assert level["value"] == 0 and level["why"].startswith("fp32 compute; ort-fp32: the fastest accepted")


def test_auto_measures_fidelity_with_one_session_open_at_a_time(tmp_path, monkeypatch):
    """Memory: the exact math's outputs are recorded and its session closed before the FP32 model's opens,
    then each candidate alone (the exact session dequantizes every weight on each run). Timing pairs each
    candidate with FP32: two at most there."""
    import gc

    import onnxruntime as ort

    real, alive, peak = ort.InferenceSession, [0], {"fidelity": 0, "timing": 0}
    phase = ["fidelity"]

    class Counting(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            alive[0] += 1
            peak[phase[0]] = max(peak[phase[0]], alive[0])

        def __del__(self):
            alive[0] -= 1

    timed = wf.timed

    def timing(*a, **k):
        gc.collect()
        phase[0] = "timing"
        return timed(*a, **k)

    monkeypatch.setattr(ort, "InferenceSession", Counting)
    monkeypatch.setattr(wf, "timed", timing)
    m = _exact_int4_mlp()
    onnx.save(m, tmp_path / "f.onnx")
    choice = wf.choose(m, _plan(m), tmp_path / "f.onnx", [{"x": _x((16, 64))}], budget_s=0.05)
    assert {t.name for t in choice.trials} == {"qdq", "ort-fp32", "ort-int8"}
    assert peak == {"fidelity": 1, "timing": 2}, peak
