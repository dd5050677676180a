"""--format ort (passes/nbits.py): MatMulNBits and GatherBlockQuantized packed the way onnxruntime reads them.

Oracle: the same plan written in the portable form, its DequantizeLinear evaluated by onnx.reference (the
exact dequantized weights), and numpy's float64 product with them. onnxruntime's MatMulNBits at accuracy level 0
(fp32 compute) must equal that product to within float rounding; GatherBlockQuantized must return the
dequantized rows bit for bit. A wrong nibble order, offset, padding, scale layout or zero-point packing gives
errors of the order of the outputs themselves.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from checks import attr, fused_ops, run, written_dequantized
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcli import QuantConfig, Scheme
from qcli.core.errors import InputError
from qcli.passes import nbits
from qcli.passes.blockwise import apply_weight_only
from qcli.schemes.weight_only.planner import plan_w4a16

SCHEME = {4: Scheme.W4A16, 8: Scheme.W8A16}


def _model(nodes, inputs, outputs, inits: dict):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _w(shape, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def matmul_model(k, n=24, seed=0):
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    return _model([node], [_vi("x", ["M", k])], [_vi("y", ["M", n])], {"W": _w((k, n), seed)})


def table_model(rows=300, d=96, seed=0):
    node = helper.make_node("Gather", ["E", "ids"], ["y"], name="emb")
    return _model(
        [node], [_vi("ids", ["B", "T"], TensorProto.INT64)], [_vi("y", ["B", "T", d])], {"E": _w((rows, d), seed)}
    )


def _both(m, bits=4, symmetric=True, block=32, level=nbits.FP32):
    """The plan written in both forms: (qdq model, ort model)."""
    plan = plan_w4a16(m, QuantConfig.of(scheme=SCHEME[bits], block_size=block, weight_symmetric_int4=symmetric))
    return apply_weight_only(m, plan, weight_format="qdq"), apply_weight_only(
        m, plan, weight_format="ort", accuracy_level=level
    )


def _node(q, op):
    return next(n for n in q.graph.node if n.op_type == op)


def _init(q, name):
    return numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == name))


def _x(shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CASES = [(bits, sym, block) for bits in (4, 8) for sym in (True, False) for block in (16, 32, 64, 128, 256)]


@pytest.mark.parametrize("extra", [0, 7], ids=["K-whole-blocks", "K-plus-7"])
@pytest.mark.parametrize("bits,symmetric,block", CASES, ids=[f"b{b}-{'sym' if s else 'asym'}-{k}" for b, s, k in CASES])
def test_matmulnbits_equals_the_exact_dequantized_product(bits, symmetric, block, extra):
    """K = 2 blocks (+7: a short, padded last block, odd k_blocks for the packed zero points). onnxruntime's
    MatMulNBits (fp32 compute) = x @ the DequantizeLinear values of the portable form, to within float rounding
    (measured at most 7.5e-7 of the largest output)."""
    k, n = 2 * block + extra, 24
    qdq, q = _both(matmul_model(k, n), bits, symmetric, block)
    node = _node(q, "MatMulNBits")
    assert node.domain == "com.microsoft" and any(o.domain == "com.microsoft" for o in q.opset_import)
    assert (attr(node, "K"), attr(node, "N"), attr(node, "bits"), attr(node, "block_size")) == (k, n, bits, block)
    assert attr(node, "accuracy_level") is None  # level 0 is the attribute's default: left out
    kb = -(-k // block)
    assert _init(q, node.input[1]).shape == (n, kb, block * bits // 8) and _init(q, node.input[1]).dtype == np.uint8
    assert _init(q, node.input[2]).shape == (n, kb)
    if symmetric:
        assert len(node.input) == 3  # the default zero point 2^(bits-1) is the offset the codes are stored with
    else:
        assert _init(q, node.input[3]).shape == (n, -(-kb * bits // 8))
    (deq,) = written_dequantized(qdq).values()
    x = _x((5, k))
    want = x.astype(np.float64) @ deq.astype(np.float64)
    got = run(q, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_pack_puts_the_first_code_in_the_low_bits():
    """Hand-computed: 4-bit codes 0..15 pack to 0x10, 0x32, ...; 8-bit codes are their own bytes."""
    codes = np.arange(16).reshape(1, 16)
    assert nbits.pack(codes, 4).tolist() == [[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]]
    assert nbits.pack(codes, 8).tolist() == codes.tolist()


def test_symmetric_codes_are_stored_plus_8_and_padding_dequantizes_to_zero():
    """The stored bytes, unpacked here: code + 8 for int4 (-8 -> 0, the block's extreme), and the padding
    past K is the zero point 8."""
    qdq, q = _both(matmul_model(40, 3), 4, True, 32)  # K = 40: 24 padded codes in the second block
    (deq,) = written_dequantized(qdq).values()
    dq = _node(qdq, "DequantizeLinear")
    codes = _init(qdq, dq.input[0]).astype(np.int64).T  # [N, K]
    b = _init(q, _node(q, "MatMulNBits").input[1]).reshape(3, -1)
    unpacked = np.stack([b & 0xF, b >> 4], axis=-1).reshape(3, -1).astype(np.int64)
    np.testing.assert_array_equal(unpacked[:, :40], codes + 8)
    assert np.all(unpacked[:, 40:] == 8) and np.all(unpacked.min(axis=1) == 0)
    assert np.abs(deq).max() > 0


def test_accuracy_level_4_is_written_and_runs_close_to_the_exact_product():
    """Level 4 quantizes the activations to int8 per block: not exact (measured 0.55% of the largest output);
    the attribute is in the node."""
    qdq, q = _both(matmul_model(128, 64), level=nbits.INT8)
    assert attr(_node(q, "MatMulNBits"), "accuracy_level") == 4
    (deq,) = written_dequantized(qdq).values()
    x = _x((8, 128))
    want = x @ deq
    err = np.abs(run(q, {"x": x})[0] - want).max() / np.abs(want).max()
    assert 0 < err < 0.02


def test_an_accuracy_level_outside_0_to_4_is_refused():
    with pytest.raises(InputError, match="0 .. 4"):
        _both(matmul_model(64), level=5)


GEMMS = {"transB0": dict(transB=0), "transB1-alpha-beta": dict(transB=1, alpha=2.0, beta=0.5)}


@pytest.mark.parametrize("kw", GEMMS.values(), ids=GEMMS.keys())
def test_gemm_becomes_matmulnbits_plus_the_scaled_bias(kw):
    """Same numbers as the portable form run exactly (graph optimizations off), to within float rounding."""
    b = _w((48, 96) if kw["transB"] else (96, 48))
    node = helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="fc", **kw)
    m = _model([node], [_vi("x", ["N", 96])], [_vi("y", ["N", 48])], {"B": b, "C": _w((48,), 1, 1.0)})
    qdq, q = _both(m)
    assert [n.op_type for n in q.graph.node] == ["MatMulNBits", "Add"] and _node(q, "MatMulNBits").name == "fc"
    x = _x((6, 96))
    want = run(qdq, {"x": x}, exact_qdq=True)[0]
    np.testing.assert_allclose(run(q, {"x": x})[0], want, rtol=0, atol=1e-5 * np.abs(want).max())


TABLES = [(bits, sym, d) for bits in (4, 8) for sym in (True, False) for d in (96, 100)]


@pytest.mark.parametrize("bits,symmetric,d", TABLES, ids=[f"b{b}-{'sym' if s else 'asym'}-D{d}" for b, s, d in TABLES])
def test_gather_block_quantized_returns_the_dequantized_rows(bits, symmetric, d):
    """Gather on a constant table -> GatherBlockQuantized (blocks of 32 along the row; D = 100 leaves a short
    block); the rows gathered, negative indices included, equal the dequantized table's bit for bit."""
    qdq, q = _both(table_model(300, d), bits, symmetric)
    node = _node(q, "GatherBlockQuantized")
    assert (attr(node, "gather_axis"), attr(node, "quantize_axis"), attr(node, "block_size")) == (0, 1, 32)
    data = next(t for t in q.graph.initializer if t.name == node.input[0])
    want_type = {(4, True): TensorProto.INT4, (4, False): TensorProto.UINT4}.get((bits, symmetric), TensorProto.UINT8)
    assert data.data_type == want_type and len(node.input) == (3 if symmetric else 4)
    assert "E" not in {t.name for t in q.graph.initializer}
    ids = np.array([[0, 299, -1, 17], [5, 5, -300, 123]], np.int64)
    table = ReferenceEvaluator(qdq).run(None, {"ids": np.arange(300, dtype=np.int64)[None]})[0][0]
    np.testing.assert_array_equal(run(q, {"ids": ids})[0], table[ids])


def tied_model(rows=200, d=64):
    """A table read by a Gather (embedding) and by a Gemm(transB=1) (the output projection, tied)."""
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="emb"),
        helper.make_node("Reshape", ["h", "shape"], ["h2"], name="flat"),
        helper.make_node("Gemm", ["h2", "E"], ["logits"], name="head", transB=1),
    ]
    inits = {"E": _w((rows, d)), "shape": np.array([-1, d], np.int64)}
    return _model(nodes, [_vi("ids", ["B", "T"], TensorProto.INT64)], [_vi("logits", ["BT", rows])], inits)


@pytest.mark.parametrize("level", [nbits.FP32, nbits.INT8])
def test_a_tied_table_serves_both_readers_and_shares_its_scales(level):
    """Both readers quantized from the same rows (blocks along D): GatherBlockQuantized and MatMulNBits read one
    scales initializer; the float table is gone; the outputs are the portable form's exact ones (level 4: the
    projection within 1%, measured 0.22%)."""
    qdq, q = _both(tied_model(), level=level)
    gbq, mnb = _node(q, "GatherBlockQuantized"), _node(q, "MatMulNBits")
    assert gbq.input[2] == mnb.input[2] and "E" not in {t.name for t in q.graph.initializer}
    ids = np.array([[1, 199, 42]], np.int64)
    want = run(qdq, {"ids": ids}, exact_qdq=True)[0]
    got = run(q, {"ids": ids})[0]
    tol = 1e-5 if level == nbits.FP32 else 0.01
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_a_weight_read_by_two_matmuls_is_stored_once_and_both_run_as_matmulnbits(tmp_path):
    w = _w((64, 64))
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="mm2"),
    ]
    m = _model(nodes, [_vi("x", ["N", 64])], [_vi("y", ["N", 64])], {"W": w})
    qdq, q = _both(m)
    a, b = (n for n in q.graph.node if n.op_type == "MatMulNBits")
    assert a.input[1:] == b.input[1:] and len(q.graph.initializer) == 2
    onnx.save(q, tmp_path / "q.onnx")
    assert fused_ops(tmp_path / "q.onnx", tmp_path) == {"MatMulNBits": 2}
    x = _x((3, 64))
    want = run(qdq, {"x": x}, exact_qdq=True)[0]
    np.testing.assert_allclose(run(q, {"x": x})[0], want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("symmetric", [True, False])
def test_qdq_with_ort_tables_gathers_4_bit_codes_and_keeps_the_matmuls_portable(tmp_path, symmetric):
    """What --format auto writes when the portable form wins: the tied table's Gather becomes
    GatherBlockQuantized (4-bit codes, not one code per byte), its Gemm stays DequantizeLinear -> MatMul, which
    onnxruntime fuses into MatMulNBits; the outputs are the all-portable form's exact ones."""
    m = tied_model()
    plan = plan_w4a16(m, QuantConfig.of(scheme=Scheme.W4A16, weight_symmetric_int4=symmetric))
    qdq = apply_weight_only(m, plan, weight_format="qdq")
    mixed = apply_weight_only(m, plan, weight_format="qdq", tables="ort")
    ops = [n.op_type for n in mixed.graph.node]
    assert "GatherBlockQuantized" in ops and "Gather" not in ops and "MatMulNBits" not in ops
    assert "DequantizeLinear" in ops and "MatMul" in ops
    table = next(t for t in mixed.graph.initializer if t.name == _node(mixed, "GatherBlockQuantized").input[0])
    assert table.data_type == (TensorProto.INT4 if symmetric else TensorProto.UINT4)
    assert mixed.ByteSize() < qdq.ByteSize() - 200 * 64 // 2  # the table's codes take half the bytes
    onnx.save(mixed, tmp_path / "q.onnx")
    assert fused_ops(tmp_path / "q.onnx", tmp_path).get("MatMulNBits") == 1
    ids = np.array([[1, 199, 42], [0, 7, -1]], np.int64)
    want = run(qdq, {"ids": ids}, exact_qdq=True)[0]
    got = run(mixed, {"ids": ids}, exact_qdq=True)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
