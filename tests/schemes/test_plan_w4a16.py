"""W4A16: which weights the planner quantizes (plan_w4a16.py) and what the int4 pass writes (passes/int4.py).

Oracles, all independent of qcli:
- `expected_dequantized`: the blocked int4 weight recomputed in numpy (scales from each block's range along
  the reduction axis K; symmetric blocks put their signed extreme exactly on -8);
- `written_dequantized`: the DequantizeLinear nodes qcli wrote, evaluated by onnx.reference from the written
  initializers (the two must agree bit for bit);
- onnxruntime running the float model (SQNR floors a few dB under the measured values), and onnxruntime's
  own fused graph (MatMulNBits).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from checks import attr, fused_ops, ops, run, sqnr, written_dequantized
from models import cnn, mlp
from onnx import TensorProto, helper, numpy_helper

from qcli import QuantConfig, Scheme, quantize
from qcli.core.plan import Action, Why

W4 = Scheme.W4A16


# ---------------------------------------------------------------------------------------------- oracles


def expected_dequantized(w: np.ndarray, block: int, symmetric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Blocked int4 round trip of a [K, N] weight, in numpy: blocks of `block` rows along K (the last one
    may be short), one scale (and zero point) per block and column. Returns (dequantized, codes)."""
    w = w.astype(np.float32)
    deq, codes = np.empty_like(w), np.empty(w.shape, np.int64)
    for b0 in range(0, w.shape[0], block):
        blk = w[b0 : b0 + block]
        lo, hi = blk.min(axis=0), blk.max(axis=0)
        if symmetric:  # int4: the signed extreme lands on -8, so all 16 levels are used
            extreme = np.where(np.abs(lo) >= np.abs(hi), lo, hi)
            scale = (extreme / np.float32(-8)).astype(np.float32)  # exact: a power of two
            scale = np.where(scale != 0, scale, np.float32(1)).astype(np.float32)
            q = np.clip(np.rint(blk / scale), -8, 7)
            zp = np.zeros_like(q)
        else:  # uint4: [min(lo, 0), max(hi, 0)] over 0..15, zero point rounded
            lo64, hi64 = np.minimum(lo, 0).astype(np.float64), np.maximum(hi, 0).astype(np.float64)
            s64 = (hi64 - lo64) / 15
            s64 = np.where(s64 > 0, s64, 1.0)
            zp = np.clip(np.rint(-lo64 / s64), 0, 15)
            scale = s64.astype(np.float32)
            q = np.clip(np.rint(blk / scale) + zp, 0, 15)
        codes[b0 : b0 + block] = q
        deq[b0 : b0 + block] = ((q - zp).astype(np.float32) * scale).astype(np.float32)
    return deq, codes


def weight_read_by(q: onnx.ModelProto, node_name: str) -> tuple[onnx.NodeProto, np.ndarray]:
    """The DequantizeLinear feeding the MatMul `node_name`, and its value (onnx.reference)."""
    mm = next(n for n in q.graph.node if n.name == node_name)
    assert mm.op_type == "MatMul"
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == mm.input[1])
    return dq, written_dequantized(q)[dq.output[0]]


def init_array(q: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == name))


def init_type(q: onnx.ModelProto, name: str) -> int:
    return next(t.data_type for t in q.graph.initializer if t.name == name)


# --------------------------------------------------------------------------------------------- builders


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def gemm_model(k=96, n=48, alpha=1.0, beta=1.0, trans_a=0, trans_b=0, bias=True, seed=0):
    """One Gemm: y[N, n] = alpha * x @ B(^T) + beta * C."""
    rng = np.random.default_rng(seed)
    b = (rng.standard_normal((n, k) if trans_b else (k, n)) * 0.2).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    inits = [numpy_helper.from_array(b, "B")] + ([numpy_helper.from_array(c, "C")] if bias else [])
    node = helper.make_node(
        "Gemm",
        ["x", "B"] + (["C"] if bias else []),
        ["y"],
        name="fc",
        alpha=alpha,
        beta=beta,
        transA=trans_a,
        transB=trans_b,
    )
    return _model([node], [_vi("x", [k, "N"] if trans_a else ["N", k])], [_vi("y", ["N", n])], inits)


def matmul_model(k, n=64, seed=0, heavy_tail=False):
    """One MatMul x[N, k] @ W[k, n]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(3, (k, n)) if heavy_tail else rng.standard_normal((k, n))
    w = (w * 0.1).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return _model([node], [_vi("x", ["N", k])], [_vi("y", ["N", n])], [numpy_helper.from_array(w, "W")])


def _quantize(tmp_path, model, **cfg):
    onnx.save(model, tmp_path / "f.onnx")
    cfg.setdefault("weight_format", "qdq")  # this file tests the portable form; test_nbits.py the ort one
    return quantize(tmp_path / "f.onnx", QuantConfig.of(scheme=W4, **cfg), out=tmp_path / "q.onnx", latency_runs=2)


def _x(shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------- tests


def test_mlp_weights_become_blocked_int4_read_by_matmulnbits(tmp_path):
    """Both MatMul weights: int4 blocks of 32 along K, exactly the numpy recomputation; opset 21; onnxruntime
    fuses both into MatMulNBits; under a third of the size (measured 0.18x); SQNR vs float measured 19.9 dB."""
    m = mlp()
    r = _quantize(tmp_path, m)
    q = onnx.load(str(r.output))
    assert q.opset_import[0].version == 21
    assert {d.node: d.action for d in r.plan.nodes if d.op_type == "MatMul"} == {
        "mm1": Action.INT4_WEIGHT,
        "mm2": Action.INT4_WEIGHT,
    }
    floats = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for node, wname in (("mm1", "w1"), ("mm2", "w2")):
        dq, value = weight_read_by(q, node)
        assert attr(dq, "block_size") == 32 and attr(dq, "axis") == 0 and len(dq.input) == 2
        assert init_type(q, dq.input[0]) == TensorProto.INT4
        np.testing.assert_array_equal(value, expected_dequantized(floats[wname], 32)[0])
    assert "w1" not in {t.name for t in q.graph.initializer}  # the float weights are gone
    assert fused_ops(r.output, tmp_path).get("MatMulNBits") == 2
    assert r.report.size["ratio"] < 0.3
    x = _x((2, 5, 64))
    assert sqnr(run(m, {"x": x})[0], run(r.output, {"x": x}, exact_qdq=True)[0]) > 17


def test_symmetric_blocks_put_each_blocks_signed_extreme_on_minus_8(tmp_path):
    """The written int4 codes: every block and column reaches -8 exactly (16 levels used), and match numpy."""
    m = matmul_model(96)
    r = _quantize(tmp_path, m)
    q = onnx.load(str(r.output))
    dq, _ = weight_read_by(q, "mm")
    codes = init_array(q, dq.input[0]).astype(np.int64)
    _, want = expected_dequantized(init_array(m, "W"), 32)
    np.testing.assert_array_equal(codes, want)
    assert np.all(codes.reshape(3, 32, 64).min(axis=1) == -8)


GEMMS = {
    "alpha": dict(alpha=0.5),  # measured 25.4 dB
    "beta-bias": dict(beta=0.25),  # measured 22.2 dB
    "transB0-alpha-beta": dict(alpha=2.0, beta=-0.5),  # measured 22.1 dB
    "transB1": dict(trans_b=1),  # measured 22.3 dB
    "transB1-alpha-beta": dict(trans_b=1, alpha=2.0, beta=0.5),  # measured 21.1 dB
    "no-bias": dict(bias=False, alpha=1.5),  # measured 22.1 dB
}


@pytest.mark.parametrize("kw", GEMMS.values(), ids=GEMMS.keys())
def test_gemm_becomes_matmul_with_alpha_in_the_weight_and_beta_on_the_bias(tmp_path, kw):
    """Gemm -> DQ(int4 [K, N]) -> MatMul [+ Add(beta * C)]. The weight written is alpha * B (transposed when
    transB=1) quantized along K; the output is x @ that weight + beta * C, and close to the float Gemm."""
    m = gemm_model(**kw)
    r = _quantize(tmp_path, m)
    trans_b, alpha, beta = kw.get("trans_b", 0), kw.get("alpha", 1.0), kw.get("beta", 1.0)
    assert r.plan.decision("fc").action == Action.INT4_WEIGHT
    assert r.plan.weights[0].axis == (1 if trans_b else 0)  # K is B's axis 1 when transB=1
    q = onnx.load(str(r.output))
    assert "Gemm" not in ops(r.output) and ops(r.output)["MatMul"] == 1
    b = init_array(m, "B")
    w_kn = (b.T if trans_b else b) * np.float32(alpha)
    _, value = weight_read_by(q, "fc")
    np.testing.assert_array_equal(value, expected_dequantized(w_kn, 32)[0])
    x = _x((8, 96))
    got = run(r.output, {"x": x}, exact_qdq=True)[0]
    want = x @ value + (beta * init_array(m, "C") if kw.get("bias", True) else 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert sqnr(run(m, {"x": x})[0], got) > 18  # measured 21.1 .. 25.4 dB
    assert fused_ops(r.output, tmp_path).get("MatMulNBits") == 1


def test_gemm_with_a_bias_from_the_graph_and_beta_is_scaled_at_run_time(tmp_path):
    """C is a graph input, not an initializer: beta cannot be folded into a constant, so beta * C must be
    computed in the graph, never a crash (regression: the pass multiplied None by beta)."""
    rng = np.random.default_rng(3)
    b = (rng.standard_normal((64, 32)) * 0.2).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "B", "c"], ["y"], name="fc", beta=0.5)
    m = _model([node], [_vi("x", ["N", 64]), _vi("c", [32])], [_vi("y", ["N", 32])], [numpy_helper.from_array(b, "B")])
    r = _quantize(tmp_path, m)
    assert r.plan.decision("fc").action == Action.INT4_WEIGHT
    feed = {"x": _x((4, 64)), "c": _x((32,), seed=8)}
    got = run(r.output, feed, exact_qdq=True)[0]
    _, value = weight_read_by(onnx.load(str(r.output)), "fc")
    np.testing.assert_array_equal(value, expected_dequantized(b, 32)[0])
    np.testing.assert_allclose(got, feed["x"] @ value + 0.5 * feed["c"], rtol=1e-4, atol=1e-4)
    assert sqnr(run(m, feed)[0], got) > 18  # measured 22.0 dB


def test_gemm_with_transposed_activation_stays_float(tmp_path):
    m = gemm_model(trans_a=1)
    r = _quantize(tmp_path, m)
    d = r.plan.decision("fc")
    assert d.action == Action.FLOAT and d.why == Why.UNSUPPORTED and not r.plan.weights
    assert ops(r.output) == {"Gemm": 1}
    x = _x((96, 4))
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(r.output, {"x": x})[0])


def _rank3():
    w = np.random.default_rng(0).standard_normal((2, 64, 32)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    m = _model([node], [_vi("x", [2, "T", 64])], [_vi("y", [2, "T", 32])], [numpy_helper.from_array(w, "W")])
    return m, {"x": _x((2, 3, 64))}


def _small_k():
    return matmul_model(16), {"x": _x((3, 16))}


def _act_x_act():
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    m = _model([node], [_vi("x", [4, 64]), _vi("w", [64, 32])], [_vi("y", [4, 32])], [])
    return m, {"x": _x((4, 64)), "w": _x((64, 32), seed=2)}


def _float16():
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float16)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    m = _model(
        [node],
        [_vi("x", ["N", 64], TensorProto.FLOAT16)],
        [_vi("y", ["N", 32], TensorProto.FLOAT16)],
        [numpy_helper.from_array(w, "W")],
    )
    return m, {"x": _x((3, 64)).astype(np.float16)}


REFUSED = {"rank-3-weight": _rank3, "K-below-one-block": _small_k, "act-x-act": _act_x_act, "float16": _float16}


@pytest.mark.parametrize("build", REFUSED.values(), ids=REFUSED.keys())
def test_matmul_weights_that_cannot_be_int4_blocks_stay_float_and_say_why(tmp_path, build):
    """Refused MatMuls: float, kind UNSUPPORTED; only the too-short K carries its reduction_dim; the model
    written computes exactly what the float one does."""
    m, feed = build()
    r = _quantize(tmp_path, m)
    d = r.plan.decision("mm")
    assert d.action == Action.FLOAT and d.why == Why.UNSUPPORTED and not r.plan.weights
    if build is _small_k:
        assert d.reason.details["reduction_dim"] == 16
    else:
        assert "reduction_dim" not in d.reason.details
    assert "DequantizeLinear" not in ops(r.output)
    np.testing.assert_array_equal(run(m, feed)[0], run(r.output, feed)[0])


@pytest.mark.parametrize("trans_b,shape,k", [(1, (64, 16), 16), (0, (16, 64), 16)], ids=["transB1", "transB0"])
def test_gemm_reduction_dim_follows_transB(tmp_path, trans_b, shape, k):
    """K is B's axis 1 when transB=1, its axis 0 otherwise: [64, 16] with transB=1 has K=16 (< one block)."""
    n = shape[0] if trans_b else shape[1]
    r = _quantize(tmp_path, gemm_model(k=k, n=n, trans_b=trans_b))
    assert r.plan.decision("fc").why == Why.UNSUPPORTED
    assert r.plan.decision("fc").reason.details["reduction_dim"] == k


def test_convolutions_stay_float_under_w4a16_and_the_gemm_becomes_matmul(tmp_path):
    """cnn(): Conv is Why.SCHEME (weights untouched float32), the Gemm (K = 32 channels) becomes
    DQ -> MatMul + Add; the output stays close to the float model (measured 20.3 dB)."""
    m = cnn(channels=32)
    r = _quantize(tmp_path, m)
    assert {d.why for d in r.plan.nodes if d.op_type == "Conv"} == {Why.SCHEME}
    assert r.plan.decision("fc").action == Action.INT4_WEIGHT
    counts = ops(r.output)
    assert "Gemm" not in counts and counts["MatMul"] == 1 and counts["Conv"] == 3
    q = onnx.load(str(r.output))
    conv_weights = [n.input[1] for n in q.graph.node if n.op_type == "Conv"]
    assert all(init_type(q, w) == TensorProto.FLOAT for w in conv_weights)
    x = _x((2, 3, 16, 16))
    assert sqnr(run(m, {"x": x})[0], run(r.output, {"x": x}, exact_qdq=True)[0]) > 17


def test_conv_transpose_is_scheme_too(tmp_path):
    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="ct")
    m = _model([node], [_vi("x", [1, 8, 5, 5])], [_vi("y", [1, 4, 7, 7])], [numpy_helper.from_array(w, "W")])
    r = _quantize(tmp_path, m)
    assert r.plan.decision("ct").why == Why.SCHEME and not r.plan.weights


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_block_size_sets_the_written_blocks(tmp_path, block):
    """K = 200 (not a multiple of any block): block_size attribute, ceil(K / block) scale rows, codes and
    values equal to numpy's, and MatMulNBits still fuses."""
    k, n = 200, 64
    m = matmul_model(k, n)
    r = _quantize(tmp_path, m, block_size=block)
    assert r.plan.weights[0].block_size == block
    q = onnx.load(str(r.output))
    dq, value = weight_read_by(q, "mm")
    assert attr(dq, "block_size") == block
    assert init_array(q, dq.input[1]).shape == (math.ceil(k / block), n)
    want, codes = expected_dequantized(init_array(m, "W"), block)
    np.testing.assert_array_equal(value, want)
    np.testing.assert_array_equal(init_array(q, dq.input[0]).astype(np.int64), codes)
    assert fused_ops(r.output, tmp_path).get("MatMulNBits") == 1


def test_smaller_blocks_are_at_least_as_faithful(tmp_path):
    """Heavy-tailed weights: a smaller block isolates outliers. Measured SQNR vs float (exact QDQ):
    16: 19.7, 32: 17.2, 64: 15.5, 128: 13.9 dB."""
    m = matmul_model(256, 64, heavy_tail=True)
    onnx.save(m, tmp_path / "f.onnx")
    x = _x((16, 256))
    ref = run(m, {"x": x})[0]
    measured = {}
    for block in (16, 32, 64, 128):
        out = tmp_path / f"q{block}.onnx"
        quantize(
            tmp_path / "f.onnx",
            QuantConfig.of(scheme=W4, block_size=block, weight_format="qdq"),
            out=out,
            latency_runs=2,
        )
        measured[block] = sqnr(ref, run(out, {"x": x}, exact_qdq=True)[0])
    assert measured[16] >= measured[32] >= measured[64] >= measured[128], measured
    assert measured[16] > measured[128] + 3, measured
    assert measured[128] > 11, measured


def test_k_not_a_multiple_of_the_block(tmp_path):
    """K = 70 with blocks of 32: blocks of 32, 32 and 6 rows; the short last block has its own scale."""
    m = matmul_model(70, 24)
    r = _quantize(tmp_path, m)
    q = onnx.load(str(r.output))
    dq, value = weight_read_by(q, "mm")
    assert init_array(q, dq.input[1]).shape == (3, 24)
    np.testing.assert_array_equal(value, expected_dequantized(init_array(m, "W"), 32)[0])
    x = _x((5, 70))
    assert sqnr(run(m, {"x": x})[0], run(r.output, {"x": x}, exact_qdq=True)[0]) > 18  # measured 21.5 dB


def test_asymmetric_blocks_are_uint4_with_a_zero_point_per_block(tmp_path):
    """weight_symmetric_int4=False: uint4 codes and zero points (one per block and column), as numpy computes
    them; onnxruntime still fuses MatMulNBits. Measured SQNR vs float 21.2 dB."""
    m = mlp()
    r = _quantize(tmp_path, m, weight_symmetric_int4=False)
    assert all(not w.symmetric and w.qtype == "uint4" for w in r.plan.weights) and len(r.plan.weights) == 2
    q = onnx.load(str(r.output))
    for node, wname in (("mm1", "w1"), ("mm2", "w2")):
        dq, value = weight_read_by(q, node)
        assert len(dq.input) == 3
        assert init_type(q, dq.input[0]) == TensorProto.UINT4 and init_type(q, dq.input[2]) == TensorProto.UINT4
        w = init_array(m, wname)
        assert init_array(q, dq.input[2]).shape == init_array(q, dq.input[1]).shape == (w.shape[0] // 32, w.shape[1])
        want, codes = expected_dequantized(w, 32, symmetric=False)
        np.testing.assert_array_equal(value, want)
        np.testing.assert_array_equal(init_array(q, dq.input[0]).astype(np.int64), codes)
    assert fused_ops(r.output, tmp_path).get("MatMulNBits") == 2
    x = _x((2, 5, 64))
    assert sqnr(run(m, {"x": x})[0], run(r.output, {"x": x}, exact_qdq=True)[0]) > 18


@pytest.mark.parametrize("pattern,excluded", [("mm1", {"mm1"}), ("MatMul", {"mm1", "mm2"}), ("mm*", {"mm1", "mm2"})])
def test_excluded_matmuls_keep_their_float32_weights(tmp_path, pattern, excluded):
    m = mlp()
    r = _quantize(tmp_path, m, exclude=(pattern,))
    q = onnx.load(str(r.output))
    for node, wname in (("mm1", "w1"), ("mm2", "w2")):
        d = r.plan.decision(node)
        mm = next(n for n in q.graph.node if n.name == node)
        if node in excluded:
            assert d.action == Action.FLOAT and d.why == Why.EXCLUDED and d.reason.details["pattern"] == pattern
            assert mm.input[1] == wname and init_type(q, wname) == TensorProto.FLOAT
            np.testing.assert_array_equal(init_array(q, wname), init_array(m, wname))
        else:
            assert d.action == Action.INT4_WEIGHT and mm.input[1] not in {t.name for t in q.graph.initializer}
    assert [w.node for w in r.plan.weights] == sorted({"mm1", "mm2"} - excluded)
    assert ops(r.output).get("DequantizeLinear", 0) == 2 - len(excluded)


def test_a_block_larger_than_every_reduction_dim_quantizes_nothing_and_says_so(tmp_path):
    """mlp(): K = 64 and 128. Blocks of 256: nothing quantized, both refused with their reduction_dim, a note
    (report warnings or notes) names the block size; the model is unchanged. Blocks of 128: mm2 is quantized,
    so no such note."""
    m = mlp()
    r = _quantize(tmp_path, m, block_size=256)
    assert not r.plan.weights
    assert {d.node: d.reason.details["reduction_dim"] for d in r.plan.by_reason(Why.UNSUPPORTED)} == {
        "mm1": 64,
        "mm2": 128,
    }
    assert [n for n in r.report.warnings + r.report.notes if "256" in n]
    assert "DequantizeLinear" not in ops(r.output)
    x = _x((2, 3, 64))
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(r.output, {"x": x})[0])

    some = _quantize(tmp_path, m, block_size=128)
    assert [w.node for w in some.plan.weights] == ["mm2"]
    assert some.plan.decision("mm1").reason.details["reduction_dim"] == 64
    assert not [n for n in some.report.warnings + some.report.notes if "128" in n]


def test_a_weight_shared_by_two_matmuls_gets_a_copy_per_reader_so_both_fuse(tmp_path):
    """onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits only where the DequantizeLinear is its
    initializers' sole reader (one DQ read by two MatMuls, or two DQs of one initializer, stay unfused: the
    weight would be dequantized on every run). So each reader gets its own int4 copy, same values; a note says
    so (--format ort stores one)."""
    w = (np.random.default_rng(0).standard_normal((64, 64)) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="mm2"),
    ]
    m = _model(nodes, [_vi("x", ["N", 64])], [_vi("y", ["N", 64])], [numpy_helper.from_array(w, "W")])
    r = _quantize(tmp_path, m)
    q = onnx.load(str(r.output))
    assert ops(r.output)["DequantizeLinear"] == 2
    assert sum(t.data_type == TensorProto.INT4 for t in q.graph.initializer) == 2
    (dq1, v1), (dq2, v2) = weight_read_by(q, "mm1"), weight_read_by(q, "mm2")
    assert not set(dq1.input) & set(dq2.input)
    np.testing.assert_array_equal(v1, expected_dequantized(w, 32)[0])
    np.testing.assert_array_equal(v2, v1)
    assert fused_ops(r.output, tmp_path) == {"MatMulNBits": 2}
    assert [n for n in r.report.notes if "one copy per reader" in n]
