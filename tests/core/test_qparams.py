"""Quantize/dequantize math: bit-exact against onnx.reference, hand-computed golden cases, int4 packing."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcli.core import qparams as qp

rng = np.random.default_rng(42)


def _reference(op: str, x: np.ndarray, p: qp.QParams, opset: int = 21) -> np.ndarray:
    attrs = {}
    if p.axis is not None and p.scale.ndim > 0:
        attrs["axis"] = p.axis
    if p.block_size:
        attrs["block_size"] = p.block_size
    node = helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)
    inits = [numpy_helper.from_array(p.scale, "s"), numpy_helper.from_array(p.zero_point, "z")]
    if op == "DequantizeLinear":
        inits.append(numpy_helper.from_array(x, "x"))
        g = helper.make_graph([node], "g", [], [helper.make_value_info("y", helper.TypeProto())], inits)
        return ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])).run(None, {})[0]
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_value_info("y", helper.TypeProto())],
        inits,
    )
    return ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])).run(None, {"x": x})[
        0
    ]


CASES = [
    ("per-tensor uint8 asym", (4, 8, 5), qp.UINT8, False, None, None),
    ("per-tensor int8 sym", (4, 8, 5), qp.INT8, True, None, None),
    ("per-channel int8 axis0", (16, 8, 3, 3), qp.INT8, True, 0, None),
    ("per-channel int8 7-bit", (16, 8, 3, 3), qp.INT8_7BIT, True, 0, None),
    ("per-tensor int8 7-bit", (8, 5), qp.INT8_7BIT, True, None, None),
    ("per-channel int8 axis1", (64, 24), qp.INT8, True, 1, None),
    ("per-channel uint8 asym", (6, 10), qp.UINT8, False, 0, None),
    ("blocked int4 sym", (96, 12), qp.INT4, True, 0, 32),
    ("blocked uint4 asym", (70, 9), qp.UINT4, False, 0, 32),  # 70 is not a multiple of 32
    ("blocked int4 axis1", (10, 64), qp.INT4, True, 1, 16),
]


@pytest.mark.parametrize("name,shape,qtype,sym,axis,block", CASES, ids=[c[0] for c in CASES])
def test_quantize_dequantize_match_onnx_reference_bit_exactly(name, shape, qtype, sym, axis, block):
    x = (rng.standard_normal(shape) * 3 + rng.standard_normal() * 0.5).astype(np.float32)
    p = qp.weight_qparams(x, qtype, sym, axis, block)
    q = qp.quantize(x, p)
    ref_q = _reference("QuantizeLinear", x, p)
    assert q.dtype == ref_q.dtype
    np.testing.assert_array_equal(q.astype(np.int32), ref_q.astype(np.int32))
    np.testing.assert_array_equal(qp.dequantize(q, p), _reference("DequantizeLinear", q, p))


def test_golden_per_axis_and_blocked_cases():
    # per channel: channel 0 spans [-1, 1] -> scale 1/127; channel 1 spans [-4, 2] -> scale 4/127
    w = np.array([[1.0, -1.0, 0.5], [2.0, -4.0, 0.0]], np.float32)
    p = qp.weight_qparams(w, qp.INT8, True, axis=0)
    np.testing.assert_allclose(p.scale, [1 / 127, 4 / 127], rtol=1e-7)
    np.testing.assert_array_equal(qp.quantize(w, p), [[127, -127, 64], [64, -127, 0]])
    # blocked int4 symmetric: blocks of 2 along axis 0 with 3 rows -> 2 blocks, the second one partial.
    # Each block's signed extreme maps exactly to -8 (16 levels), so the scale takes the extreme's sign.
    b = np.array([[7.0], [-3.5], [0.7]], np.float32)
    pb = qp.weight_qparams(b, qp.INT4, True, axis=0, block_size=2)
    np.testing.assert_allclose(pb.scale.ravel(), [-0.875, -0.0875], rtol=1e-6)
    np.testing.assert_array_equal(qp.quantize(b, pb).astype(int).ravel(), [-8, 4, -8])
    np.testing.assert_allclose(qp.dequantize(qp.quantize(b, pb), pb).ravel(), [7.0, -3.5, 0.7], rtol=1e-6)
    # asymmetric uint8 over [0, 2.55]: scale 0.01, zero point 0
    pa = qp.from_range(0.0, 2.55, qp.UINT8, symmetric=False)
    assert abs(float(pa.scale) - 0.01) < 1e-9 and int(pa.zero_point) == 0


def test_range_always_contains_zero_and_degenerate_tensor_is_exact():
    p = qp.from_range(2.0, 5.0, qp.UINT8, symmetric=False)
    assert int(p.zero_point) == 0  # range widened to [0, 5]
    z = np.zeros((3, 4), np.float32)
    pz = qp.weight_qparams(z, qp.INT8, True, axis=0)
    np.testing.assert_array_equal(qp.dequantize(qp.quantize(z, pz), pz), z)


def test_bias_scale_is_input_scale_times_weight_scale():
    p = qp.bias_qparams(np.float32(0.02), np.array([0.5, 0.25], np.float32))
    np.testing.assert_array_equal(p.scale, np.array([0.01, 0.005], np.float32))
    assert p.qtype is qp.INT32 and p.axis == 0


def test_sqnr():
    x = rng.standard_normal(1000).astype(np.float32)
    assert qp.sqnr_db(x, x) == float("inf")
    assert abs(qp.sqnr_db(x, x + 0.1 * x) - 20.0) < 1e-6


def test_weight_algorithms_registry_rtn_matches_reference_math():
    from qcli.weights import WEIGHT_ALGOS

    w = rng.standard_normal((64, 8)).astype(np.float32)
    q, p = WEIGHT_ALGOS.get("rtn")(w, qp.INT4, True, 0, 32)
    np.testing.assert_array_equal(
        q.astype(np.int8), qp.quantize(w, qp.weight_qparams(w, qp.INT4, True, 0, 32)).astype(np.int8)
    )
    assert WEIGHT_ALGOS.names() == ["adaround", "awq", "gptq", "rtn"]


def test_widen_scale_keeps_int32_bias_in_range():
    w = np.array([[0.5, -0.25], [1e-34, -1e-34]], np.float32)  # channel 1 is dead
    p = qp.weight_qparams(w, qp.INT8, True, axis=0)
    x_scale, bias = np.float32(0.1), np.array([0.3, 5e-28], np.float32)
    floor = (np.abs(bias) / (x_scale * (2**31 - 1)) * (1 + 1e-6)).astype(np.float32)
    q, wide = qp.widen_scale(w, p, floor)
    assert wide.scale[0] == p.scale[0] and wide.scale[1] >= floor[1]  # only the dead channel changes
    np.testing.assert_array_equal(q[0], qp.quantize(w, p)[0])
    b = qp.bias_qparams(x_scale, wide.scale)
    assert np.all(np.abs(bias / b.scale) <= 2**31 - 1)


def test_asymmetric_zero_point_is_rounded_not_truncated():
    # [-0.3, 1.0] on uint8: scale 1.3/255, exact zero point 0.3 * 255 / 1.3 = 58.85 -> 59 (truncation: 58)
    p = qp.from_range(-0.3, 1.0, qp.UINT8, symmetric=False)
    assert float(p.scale) == np.float32(1.3 / 255) and int(p.zero_point) == 59
    # [-0.31, 1.0]: exact 60.34 -> 60 (ceiling: 61)
    assert int(qp.from_range(-0.31, 1.0, qp.UINT8, symmetric=False).zero_point) == 60
    # 0 stays exactly representable: dequantize(quantize(0)) == 0
    x = np.array([0.0, -0.3, 1.0], np.float32)
    np.testing.assert_array_equal(qp.dequantize(qp.quantize(x, p), p)[0], 0.0)


def test_quantize_rounds_half_to_even_and_saturates():
    p = qp.QParams(np.array(0.5, np.float32), np.array(10, np.uint8), qp.UINT8)
    x = np.array([1.25, 1.75, -5.25, 1000.0, -1000.0], np.float32)  # x / s = 2.5, 3.5, -10.5, ...
    np.testing.assert_array_equal(qp.quantize(x, p), [12, 14, 0, 255, 0])


def test_reduced_range_weights_stay_within_seven_bits():
    w = (rng.standard_normal((8, 4, 3, 3)) * 2).astype(np.float32)
    p = qp.weight_qparams(w, qp.INT8_7BIT, True, axis=0)
    q = qp.quantize(w, p).astype(np.int32)
    assert q.min() >= -64 and q.max() <= 63
    absmax = np.abs(w).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(p.scale, absmax / 63, rtol=1e-6)  # each channel's extreme lands on +-63
    assert np.all(np.abs(q).reshape(8, -1).max(axis=1) == 63)
    full = qp.quantize(w, qp.weight_qparams(w, qp.INT8, True, axis=0)).astype(np.int32)
    assert np.all(np.abs(full).reshape(8, -1).max(axis=1) == 127)


def test_int4_block_scales_follow_each_blocks_signed_extreme():
    """Blocks of 16 along K=40 (3 blocks, the last partial) for 5 columns: every block's scale is computed
    here from a plain reshape, independently of qparams' padding and moveaxis."""
    w = rng.standard_normal((40, 5)).astype(np.float32)
    p = qp.weight_qparams(w, qp.INT4, True, axis=0, block_size=16)
    assert p.scale.shape == (3, 5)
    for b in range(3):
        block = w[b * 16 : (b + 1) * 16]
        extreme = np.where(np.abs(block.min(0)) >= np.abs(block.max(0)), block.min(0), block.max(0))
        np.testing.assert_allclose(p.scale[b], extreme / -8, rtol=1e-6)
    q = qp.quantize(w, p).astype(np.int8)
    assert q.min() >= -8 and q.max() <= 7
    for b in range(3):  # the extreme of every block and column maps exactly to -8
        assert np.all(q[b * 16 : (b + 1) * 16].min(0) == -8)


def test_bias_scale_floor_keeps_int32_bias_in_range():
    bias, x_scale = np.array([3.0, 1e-3, -2e6], np.float32), 1e-4
    floor = qp.bias_scale_floor(bias, x_scale)
    assert np.all(np.abs(bias) / (x_scale * floor.astype(np.float64)) <= 2**31 - 1)
    np.testing.assert_allclose(floor, np.abs(bias) / (x_scale * (2**31 - 1)), rtol=1e-5)


def test_noise_meter_streams_like_one_shot():
    a, b = rng.standard_normal(300), rng.standard_normal(300)
    m = qp.NoiseMeter()
    for i in range(0, 300, 70):
        m.add(a[i : i + 70], b[i : i + 70])
    expected = 10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2))
    assert abs(m.db - expected) < 1e-9 and abs(m.relative_noise - 10 ** (-expected / 10)) < 1e-12
    assert qp.NoiseMeter().db == float("inf") and qp.NoiseMeter().relative_noise == 0.0


def test_an_all_zero_int4_block_dequantizes_to_exact_zeros():
    w = rng.standard_normal((64, 3)).astype(np.float32)
    w[32:, 1] = 0.0  # the second block of column 1 is all zeros
    p = qp.weight_qparams(w, qp.INT4, True, axis=0, block_size=32)
    assert p.scale[1, 1] != 0 and np.isfinite(p.scale).all()
    deq = qp.dequantize(qp.quantize(w, p), p)
    np.testing.assert_array_equal(deq[32:, 1], 0.0)
    assert np.isfinite(deq).all()


def test_widen_scale_raises_only_the_channels_below_their_own_floor():
    w = np.array([[0.5, -0.25], [1e-6, -1e-6], [0.005, 0.001]], np.float32)  # channel 2: scale 3.9e-5
    p = qp.weight_qparams(w, qp.INT8, True, axis=0)
    floor = np.array([0.0, 1e-4, 1e-5], np.float32)  # channel 1 needs widening; channel 2's floor is below its scale
    q, wide = qp.widen_scale(w, p, floor)
    np.testing.assert_array_equal(wide.scale[[0, 2]], p.scale[[0, 2]])
    assert abs(wide.scale[1]) == np.float32(1e-4)
    np.testing.assert_array_equal(q[[0, 2]], qp.quantize(w, p)[[0, 2]])


@pytest.mark.parametrize("name,shape,qtype,sym,axis,block", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_quantizing_a_slice_of_rows_at_a_time_is_bit_exact(monkeypatch, chunk, name, shape, qtype, sym, axis, block):
    """Slices of 1 row, of a few rows cutting blocks (rounded up to whole blocks) and of a partial last slice."""
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    p = qp.weight_qparams(x, qtype, sym, axis, block)
    monkeypatch.setattr(qp, "CHUNK", chunk)
    q = qp.quantize(x, p)
    np.testing.assert_array_equal(q.astype(np.int32), _reference("QuantizeLinear", x, p).astype(np.int32))
    np.testing.assert_array_equal(qp.dequantize(q, p), _reference("DequantizeLinear", q, p))


def test_quantizing_a_large_weight_needs_temporaries_of_one_slice_only():
    """A 16 MB float weight: the result plus one slice's int64 and float temporaries (at most 32 bytes an
    element of a slice); the whole tensor at once took 71 MB to quantize and 38 MB to dequantize."""
    import tracemalloc

    w = rng.standard_normal((2048, 2048)).astype(np.float32)
    tracemalloc.start()
    p = qp.weight_qparams(w, qp.INT8, True, axis=1)
    assert tracemalloc.get_traced_memory()[1] < 1e6  # ranges without a copy of the weight
    tracemalloc.reset_peak()
    q = qp.quantize(w, p)
    q_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    d = qp.dequantize(q, p)
    d_peak = tracemalloc.get_traced_memory()[1] - q.nbytes
    tracemalloc.stop()
    assert q_peak < q.nbytes + 32 * qp.CHUNK and d_peak < d.nbytes + 32 * qp.CHUNK
    assert qp.sqnr_db(w, d) > 38  # the figures are still right


def test_a_denormal_range_gets_a_scale_float32_holds_found_by_fuzzing():
    """[0, 1.4e-45]: its float64 scale rounds to 0 in float32, which QuantizeLinear would divide by."""
    for symmetric in (False, True):
        p = qp.from_range(np.array(0.0), np.array(1.401298464324817e-45), qp.INT8, symmetric)
        assert float(p.scale) == np.finfo(np.float32).smallest_subnormal > 0
        x = np.array([0.0, 1.401298464324817e-45], np.float32)
        assert np.isfinite(qp.dequantize(qp.quantize(x, p), p)).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_subnormal_scale_is_rounded_up_to_cover_the_range_found_by_fuzzing(symmetric):
    """[0, 3.3e-42] (make fuzz, seed 1): rounded to nearest, the int8 scale came out 9 % short (float32 holds a
    subnormal to a few bits) and the top of the range landed 9 steps out; rounded up it is covered. A normal
    scale is still the nearest float32."""
    hi = 3.332287748164415e-42
    p = qp.from_range(np.array(0.0), np.array(hi), qp.INT8, symmetric)
    x = np.array([0.0, hi], np.float32)
    back = qp.dequantize(qp.quantize(x, p), p).astype(np.float64)
    assert np.all(np.abs(back - x) <= float(p.scale) * 1.01)
    normal = qp.from_range(np.array(-1.0), np.array(3.0), qp.UINT8, False)
    assert float(normal.scale) == float(np.float32(4.0 / 255))
