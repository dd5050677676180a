"""Dynamic quantization (plan_dynamic.py, passes/dynamic.py): which nodes go int8 and why the rest stays float,
what the weights are stored as, what onnxruntime fuses the result into, and what it computes.
Oracles: onnx.reference's QuantizeLinear/DequantizeLinear, a numpy model of the dynamic math
(DynamicQuantizeLinear's uint8 rule, integer matmul, scale product), onnxruntime running the float model."""

from __future__ import annotations

import numpy as np
import pytest
from checks import fused_ops, run, sqnr
from models import cnn, mlp, model_of, vi
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcli.core.config import QuantConfig, Scheme
from qcli.core.errors import InternalError
from qcli.core.overrides import NodeOverride, Overrides, Precision
from qcli.core.plan import Action, Why, reason
from qcli.passes.dynamic import apply_dynamic
from qcli.passes.preprocess import preprocess
from qcli.schemes.dynamic.planner import MIN_MACS_PER_CONVERSION, plan_dynamic

DYN = QuantConfig.of(scheme=Scheme.DYNAMIC)


def _w(*shape, scale=0.1, seed=0):
    """Random weights; each builder passes its own seeds, so nothing depends on the order tests run in."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _x(*shape, scale=1.0, seed=100):
    return _w(*shape, scale=scale, seed=seed)


def _heads(k=64):
    """x [N, T, k] read by MatMuls a (+ bias), b, small (4 columns), and x @ x^T (two activations)."""
    inits = {"wa": _w(k, 48, seed=1), "ba": _w(48, seed=2), "wb": _w(k, 40, seed=3), "ws": _w(k, 4, seed=4)}
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["ma"], name="mm_a"),
        helper.make_node("Add", ["ma", "ba"], ["ya"], name="add_a"),
        helper.make_node("MatMul", ["x", "wb"], ["yb"], name="mm_b"),
        helper.make_node("MatMul", ["x", "ws"], ["ys"], name="mm_small"),
        helper.make_node("Transpose", ["x"], ["xt"], name="tr", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["yt"], name="mm_act"),
    ]
    outs = [vi("ya", ["N", "T", 48]), vi("yb", ["N", "T", 40]), vi("ys", ["N", "T", 4]), vi("yt", None)]
    return model_of(nodes, [vi("x", ["N", "T", k])], outs, inits)


def _dql(x):
    """ONNX DynamicQuantizeLinear: uint8, range widened to include 0, scale (max - min) / 255."""
    lo, hi = np.float32(min(x.min(), 0)), np.float32(max(x.max(), 0))
    s = np.float32((hi - lo) / np.float32(255))
    zp = np.clip(np.rint(-lo / s), 0, 255)
    return np.clip(np.rint(x / s) + zp, 0, 255).astype(np.int32), s, np.int32(zp)


def _ref_q(w, scale, zero, axis):
    """onnx.reference QuantizeLinear."""
    node = helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=axis)
    return ReferenceEvaluator(node).run(None, {"w": w, "s": scale, "z": zero})[0]


def _absmax_scale(w, axis, qmax=127):
    """Symmetric scale, computed here: max |w| over everything but `axis` (all when None) / qmax."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    return (np.abs(w.astype(np.float64)).max(axis=others) / qmax).astype(np.float32)


def _qmax(plan, node):
    """127, or 63 where the planner chose 7-bit weights for this CPU (tested in test_reduce_range_by_cpu)."""
    return 63 if next(w for w in plan.weights if w.node == node).qtype == "int8-7bit" else 127


def _floor(plan, eight_bit: float, seven_bit: float) -> float:
    """Fidelity floor for the weight bits chosen for this CPU (7 without VNNI): ~2 dB under what was measured."""
    return seven_bit if plan.decisions["reduce_range"]["value"] else eight_bit


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _producer(m, tensor):
    return next(n for n in m.graph.node if tensor in n.output)


def _matmul_parts(q, out):
    """(int8 weight, weight scale) of the MatMulInteger -> Cast -> Mul(., Mul(xs, ws)) writing `out`."""
    mul = _producer(q, out)
    cast, scale = (_producer(q, t) for t in mul.input)
    if cast.op_type != "Cast":
        cast, scale = scale, cast
    mmi = _producer(q, cast.input[0])
    assert mmi.op_type == "MatMulInteger" and scale.op_type == "Mul"
    return _inits(q)[mmi.input[1]], _inits(q)[scale.input[1]]


# -- the plan -------------------------------------------------------------------------------------------


def test_plan_reasons_and_speed_rule():
    """Per-column int8 for a and b; the 4-column MatMul and the activation x activation one stay float, each
    with its reason. The small one's figure: K*N / (K/readers + N) with 3 readers sharing x's quantization."""
    plan = plan_dynamic(_heads(), DYN)
    act = {d.node: d.action for d in plan.nodes}
    assert act["mm_a"] == act["mm_b"] == Action.INT8_OUT_FLOAT
    assert {w.node: (w.tensor, w.axis, w.qtype[:4]) for w in plan.weights} == {
        "mm_a": ("wa", 1, "int8"),
        "mm_b": ("wb", 1, "int8"),
    }
    small = plan.decision("mm_small").reason
    assert small.kind == Why.SPEED and small.details["threshold"] == MIN_MACS_PER_CONVERSION
    assert small.details["macs_per_conversion"] == pytest.approx(64 * 4 / (64 / 3 + 4))
    assert plan.decision("mm_act").why == Why.SCHEME
    assert plan.decision("tr").action == Action.FLOAT and plan.decision("tr").reason is None
    assert "min_macs_per_conversion" in plan.decisions and any("run time" in n for n in plan.notes)


def test_shared_input_conversion_pays_for_two_readers():
    """Two K=128, N=20 MatMuls on one input share its quantization: 30.5 MACs per conversion each, quantized.
    Excluding one leaves the other alone at 17.3 (< 24): float for speed (the rule reaches a fixed point)."""
    inits = {"w1": _w(128, 20, seed=1), "w2": _w(128, 20, seed=2)}
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in (1, 2)]
    m = model_of(nodes, [vi("x", ["N", 128])], [vi("y1", ["N", 20]), vi("y2", ["N", 20])], inits)
    assert len(plan_dynamic(m, DYN).weights) == 2
    plan = plan_dynamic(m, QuantConfig.of(scheme=Scheme.DYNAMIC, exclude=("mm2",)))
    assert plan.decision("mm2").why == Why.EXCLUDED
    assert plan.decision("mm1").reason.details["macs_per_conversion"] == pytest.approx(128 * 20 / 148)


def test_exclude_overrides_and_pinned_nodes_stay_float():
    m = _heads()
    over = Overrides(nodes=(NodeOverride("mm_b", Precision.PER_TENSOR), NodeOverride("mm_small", Precision.INT8)))
    plan = plan_dynamic(m, QuantConfig.of(scheme=Scheme.DYNAMIC, overrides=over))
    assert {w.node: w.axis for w in plan.weights} == {"mm_a": 1, "mm_b": None, "mm_small": 1}  # int8 forced
    assert plan.overrides == {"mm_b": "per-tensor", "mm_small": "int8"}
    pinned = plan_dynamic(m, DYN, pinned={"mm_a": reason(Why.TARGET, rank=1)})
    assert pinned.decision("mm_a").why == Why.TARGET and {w.node for w in pinned.weights} == {"mm_b"}
    q = apply_dynamic(m, plan_dynamic(m, QuantConfig.of(scheme=Scheme.DYNAMIC, exclude=("mm_a",))))
    assert _producer(q, "ma").op_type == "MatMul" and list(_producer(q, "ma").input) == ["x", "wa"]


def test_reduce_range_by_cpu(cpu_kind):
    """uint8 x int8 can saturate without VNNI: 7-bit weights there (symmetric: -63..63), 8 bits with VNNI."""
    kind, cpu = cpu_kind
    m = mlp(k=64, hidden=128)
    plan = plan_dynamic(m, DYN, cpu=cpu)
    assert plan.decisions["reduce_range"]["value"] == (kind == "avx2")
    assert [w.qtype for w in plan.weights] == ["int8-7bit" if kind == "avx2" else "int8"]
    wq, _ = _matmul_parts(apply_dynamic(m, plan), "m1")
    assert np.abs(wq).max() == (63 if kind == "avx2" else 127)  # each column's extreme lands on the limit


# -- the rewrite: weights, numerics, fused kernels ------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
def test_matmul_weights_bit_exact_and_outputs_match_numpy(per_channel):
    """The stored int8 weight is onnx.reference's QuantizeLinear with scales computed here. onnxruntime running
    the graph as written equals the numpy model of the dynamic math exactly; its fused kernels did too where
    measured (asserted > 60 dB: a vectorized quantize may round one element differently on other CPUs, a
    wrong scale or zero point gives < 45 dB). Float paths are untouched."""
    m = _heads()
    plan = plan_dynamic(m, QuantConfig.of(scheme=Scheme.DYNAMIC, per_channel=per_channel))
    q = apply_dynamic(m, plan)
    x = _x(2, 5, 64, scale=3)
    xq, xs, xz = _dql(x)
    fused, unfused, ref = run(q, {"x": x}), run(q, {"x": x}, exact_qdq=True), run(m, {"x": x})
    w_float = _inits(m)
    for out, w, k in (("ma", "wa", 0), ("yb", "wb", 1)):
        axis = 1 if per_channel else None
        scale = _absmax_scale(w_float[w], axis, _qmax(plan, "mm_b"))
        wq, ws = _matmul_parts(q, out)
        assert np.array_equal(ws, scale)
        assert np.array_equal(wq, _ref_q(w_float[w], scale, np.zeros(scale.shape, np.int8), axis or 0))
        y = ((xq - xz) @ wq.astype(np.int32)).astype(np.float32) * (xs * scale)
        y = y + w_float["ba"] if k == 0 else y
        assert np.array_equal(unfused[k], y) and sqnr(y, fused[k]) > 60
    assert np.array_equal(fused[2], ref[2]) and np.array_equal(fused[3], ref[3])


def test_fused_into_matmul_integer_to_float(tmp_path):
    """onnxruntime fuses both quantized MatMuls (one shared DynamicQuantizeLinear) and the bias Add into
    MatMulIntegerToFloat; a single-reader MatMul (mlp) goes on into DynamicQuantizeMatMul."""
    q = apply_dynamic(_heads(), plan_dynamic(_heads(), DYN))
    path = tmp_path / "heads.onnx"
    path.write_bytes(q.SerializeToString())
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in q.graph.node) == 1  # x quantized once for both
    got = fused_ops(path, tmp_path)
    assert got.get("MatMulIntegerToFloat") == 2 and got.get("DynamicQuantizeLinear") == 1
    assert "MatMulInteger" not in got and "Add" not in got
    assert got.get("MatMul", 0) + got.get("FusedMatMul", 0) == 2  # the small one, x @ x^T (Transpose fused)
    m = mlp(k=64, hidden=128)
    (tmp_path / "mlp.onnx").write_bytes(apply_dynamic(m, plan_dynamic(m, DYN)).SerializeToString())
    assert fused_ops(tmp_path / "mlp.onnx", tmp_path).get("DynamicQuantizeMatMul") == 1


def test_fidelity_against_float():
    """Measured 40.6 / 40.5 dB (8-bit weights), 37.1 / 36.9 dB (7-bit), per channel."""
    m = _heads()
    plan = plan_dynamic(m, DYN)
    q = apply_dynamic(m, plan)
    x = _x(4, 8, 64)
    ref, got = run(m, {"x": x}), run(q, {"x": x})
    assert min(sqnr(ref[0], got[0]), sqnr(ref[1], got[1])) > _floor(plan, 38.5, 35)


def test_gemm_as_matmul_with_alpha_beta_and_bias(tmp_path):
    """Gemm(transB=1, alpha, beta, C) -> the MatMul form on alpha*B^T per column, plus beta*C: equal to numpy
    (fused: > 60 dB, see above), and fused with its bias into one DynamicQuantizeMatMul."""
    b, c = _w(96, 64, seed=1), _w(96, seed=2)
    node = helper.make_node("Gemm", ["x", "b", "c"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0)
    m = model_of([node], [vi("x", ["N", 64])], [vi("y", ["N", 96])], {"b": b, "c": c})
    plan = plan_dynamic(m, DYN)
    q = apply_dynamic(m, plan)
    assert "Gemm" not in {n.op_type for n in q.graph.node}
    (tmp_path / "gemm.onnx").write_bytes(q.SerializeToString())
    assert fused_ops(tmp_path / "gemm.onnx", tmp_path) == {"DynamicQuantizeMatMul": 1}
    wa = (b * np.float32(0.5)).astype(np.float32)
    scale = _absmax_scale(wa, 0, _qmax(plan, "fc"))
    wq = _ref_q(wa, scale, np.zeros(96, np.int8), 0).T.astype(np.int32)
    x = _x(8, 64)
    xq, xs, xz = _dql(x)
    y = ((xq - xz) @ wq).astype(np.float32) * (xs * scale) + c * np.float32(2.0)
    assert np.array_equal(run(q, {"x": x}, exact_qdq=True)[0], y) and sqnr(y, run(q, {"x": x})[0]) > 60
    assert sqnr(run(m, {"x": x})[0], y) > _floor(plan, 40.5, 37)  # measured 42.4 dB, 38.8 dB (7-bit)


def test_conv_float_by_default_conv_integer_when_forced(tmp_path):
    """ConvInteger is no faster than float Conv: float unless forced. Forced: uint8 weights around 128, per
    output channel scales (onnx.reference bit-exact), ConvInteger in the fused graph, 42.0 dB measured."""
    m, _ = preprocess(cnn())
    plan = plan_dynamic(m, DYN)
    assert plan.decision("conv1").why == Why.SCHEME and "ConvInteger" in plan.decision("conv1").reason.text
    forced = QuantConfig.of(scheme=Scheme.DYNAMIC, overrides=Overrides(nodes=(NodeOverride("Conv", Precision.INT8),)))
    q = apply_dynamic(m, plan_dynamic(m, forced))
    path = tmp_path / "cnn.onnx"
    path.write_bytes(q.SerializeToString())
    assert fused_ops(path, tmp_path).get("ConvInteger") == 3
    ci = next(n for n in q.graph.node if n.op_type == "ConvInteger")
    w = _inits(m)[next(n for n in m.graph.node if n.name == "conv1").input[1]]
    scale = _absmax_scale(w, 0)
    assert _inits(q)[ci.input[3]] == 128
    assert np.array_equal(_inits(q)[ci.input[1]], _ref_q(w, scale, np.full(scale.shape, 128, np.uint8), 0))
    x = _x(2, 3, 16, 16)
    assert sqnr(run(m, {"x": x})[0], run(q, {"x": x})[0]) > 40


def _lstm(direction="forward", hidden=32, inputs=48, layout=0, op="LSTM"):
    d, gates = (2 if direction == "bidirectional" else 1), (3 if op == "GRU" else 4)
    inits = {
        "W": _w(d, gates * hidden, inputs, scale=0.2, seed=1),
        "R": _w(d, gates * hidden, hidden, scale=0.2, seed=2),
    }
    node = helper.make_node(op, ["x", "W", "R"], ["Y", "Yh"], name="rnn", hidden_size=hidden, direction=direction)
    if layout:
        node.attribute.append(helper.make_attribute("layout", 1))
    return model_of([node], [vi("x", [10, "N", inputs])], [vi("Y", None), vi("Yh", None)], inits)


@pytest.mark.parametrize("direction,per_channel", [("forward", True), ("bidirectional", True), ("forward", False)])
def test_lstm_to_dynamic_quantize_lstm(direction, per_channel):
    """W [D, 4H, I] -> int8 [D, I, 4H] (onnx.reference per gate row or per direction), scales [D, 4H] or
    [D], zero points 0. Against the float LSTM, worst output: per channel 36.4 / 37.0 dB (forward /
    bidirectional; 32.8 / 33.1 with 7-bit weights), per direction 34.0 dB (29.8)."""
    m = _lstm(direction, hidden=96)
    plan = plan_dynamic(m, QuantConfig.of(scheme=Scheme.DYNAMIC, per_channel=per_channel))
    q = apply_dynamic(m, plan)
    (node,) = q.graph.node
    assert node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft"
    w, inits = _inits(m)["W"], _inits(q)
    d = w.shape[0]
    flat = w.reshape(d * w.shape[1], -1) if per_channel else w.reshape(d, -1)
    scale = _absmax_scale(flat, 0, _qmax(plan, "rnn"))
    expect = _ref_q(flat, scale, np.zeros(scale.shape, np.int8), 0).reshape(w.shape).transpose(0, 2, 1)
    assert np.array_equal(inits[node.input[1]], expect)
    assert inits[node.input[8]].shape == ((d, w.shape[1]) if per_channel else (d,)) and not inits[node.input[9]].any()
    x = _x(10, 3, 48)
    worst = min(sqnr(r, c) for r, c in zip(run(m, {"x": x}), run(q, {"x": x})))
    assert worst > (_floor(plan, 34.5, 31) if per_channel else _floor(plan, 32, 28))


def test_lstm_gru_limits():
    """GRU has no integer kernel; LSTM batch-first has no DynamicQuantizeLSTM form; hidden 16 is too small."""
    assert plan_dynamic(_lstm(op="GRU"), DYN).decision("rnn").why == Why.NO_INT_KERNEL
    assert "GRU" in plan_dynamic(_lstm(op="GRU"), DYN).decision("rnn").reason.text
    assert plan_dynamic(_lstm(layout=1), DYN).decision("rnn").why == Why.UNSUPPORTED
    assert plan_dynamic(_lstm(hidden=16, inputs=16), DYN).decision("rnn").why == Why.SPEED


def test_gather_table_int8_per_column():
    """A large embedding table is stored int8 and its gathered rows dequantized per column: equal to
    onnx.reference's DequantizeLinear(QuantizeLinear(table)) rows. A small table stays float."""
    table, small = _w(1000, 96, seed=1), _w(10, 8, seed=2)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
        helper.make_node("Gather", ["small", "pos_ids"], ["s"], name="pos"),
    ]
    inputs = [vi("ids", ["N"], 7), vi("pos_ids", ["N"], 7)]
    m = model_of(nodes, inputs, [vi("e", None), vi("s", None)], {"table": table, "small": small})
    plan = plan_dynamic(m, DYN)
    assert plan.decision("emb").action == Action.PASSTHROUGH and plan.decision("pos").why == Why.SCHEME
    q = apply_dynamic(m, plan)
    scale = _absmax_scale(table, 1)
    tq = _ref_q(table, scale, np.zeros(96, np.int8), 1)
    deq = helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1)
    expect = ReferenceEvaluator(deq).run(None, {"q": tq, "s": scale})[0]
    ids, pos = np.array([3, 999, 0, 3], np.int64), np.array([0, 9, 2, 2], np.int64)
    got = run(q, {"ids": ids, "pos_ids": pos})
    assert np.array_equal(got[0], expect[ids]) and np.array_equal(got[1], small[pos])
    assert not any(t.dims == [1000, 96] and t.data_type == 1 for t in q.graph.initializer)


def test_input_model_unchanged_and_inplace():
    m = _heads()
    before = m.SerializeToString()
    plan = plan_dynamic(m, DYN)
    q = apply_dynamic(m, plan)
    assert m.SerializeToString() == before and q is not m
    assert apply_dynamic(m, plan, inplace=True) is m and m.SerializeToString() != before


def test_old_opset_refused():
    m = mlp(opset=10, k=64, hidden=128)
    with pytest.raises(InternalError, match="opset"):
        apply_dynamic(m, plan_dynamic(m, DYN))
