"""Scales, zero points and the reference quantize/dequantize math (pure numpy, ONNX semantics).

Granularity is expressed the way ONNX's QuantizeLinear expresses it: `axis=None` per tensor,
`axis=k` per channel along k, `axis=k, block_size=b` per block of b elements along k.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto


@dataclass(frozen=True)
class QType:
    name: str
    qmin: int
    qmax: int
    np_dtype: type
    onnx_type: int

    @property
    def signed(self) -> bool:
        return self.qmin < 0


INT8 = QType("int8", -128, 127, np.int8, TensorProto.INT8)
INT8_7BIT = QType("int8-7bit", -64, 63, np.int8, TensorProto.INT8)  # "reduce range" weights
UINT8 = QType("uint8", 0, 255, np.uint8, TensorProto.UINT8)
INT4 = QType("int4", -8, 7, ml_dtypes.int4, TensorProto.INT4)
UINT4 = QType("uint4", 0, 15, ml_dtypes.uint4, TensorProto.UINT4)
INT32 = QType("int32", -(2**31), 2**31 - 1, np.int32, TensorProto.INT32)
# The one table of quantized types: plans name them, passes and measurements look them up here.
QTYPES = {t.name: t for t in (INT8, INT8_7BIT, UINT8, INT4, UINT4, INT32)}
CHUNK = 1 << 18  # elements quantized at a time (whole rows): a few MB of temporaries, whatever the tensor


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray  # float32; scalar, [C] per channel, or blocked shape
    zero_point: np.ndarray  # qtype.np_dtype, same shape as scale
    qtype: QType
    axis: int | None = None
    block_size: int | None = None


def broadcast(p: np.ndarray, x: np.ndarray, axis: int | None, block_size: int | None) -> np.ndarray:
    """Expand scale/zero-point to x's shape (onnx.reference's reshape_input, per tensor/axis/block)."""
    if axis is None or p.ndim == 0 or p.size == 1:
        return p.reshape(())
    axis = axis % x.ndim
    if block_size:
        p = np.repeat(p, block_size, axis=axis)
        return np.take(p, np.arange(x.shape[axis]), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return p.reshape(shape)


def _row_chunks(x: np.ndarray, qp: QParams):
    """x in slices of whole rows (axis 0) of about CHUNK elements, each with its own scale and zero point:
    the elementwise math then needs temporaries of one slice, not of the whole tensor (a 64 MB weight
    would otherwise take several hundred MB of int64 and float intermediates). Per-block rows along axis 0
    are cut on block boundaries."""
    axis = None if qp.axis is None else qp.axis % max(x.ndim, 1)
    if x.ndim == 0 or x.size <= CHUNK or x.shape[0] < 2:
        yield ..., x, qp.scale, qp.zero_point
        return
    rows = max(1, CHUNK // (x.size // x.shape[0]))
    if axis == 0 and qp.block_size:
        rows = -(-rows // qp.block_size) * qp.block_size
    per_row = qp.scale.ndim > 0 and qp.scale.size > 1 and (axis == 0 or (qp.block_size and qp.scale.ndim == x.ndim))
    for start in range(0, x.shape[0], rows):
        stop = min(start + rows, x.shape[0])
        if not per_row:
            yield slice(start, stop), x[start:stop], qp.scale, qp.zero_point
        elif axis == 0 and qp.block_size:
            b = slice(start // qp.block_size, -(-stop // qp.block_size))
            yield slice(start, stop), x[start:stop], qp.scale[b], qp.zero_point[b]
        else:
            yield slice(start, stop), x[start:stop], qp.scale[start:stop], qp.zero_point[start:stop]


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), a slice of rows at a time."""
    out = np.empty(np.shape(x), qp.qtype.np_dtype)
    for rows, part, s, z in _row_chunks(np.asarray(x), qp):
        scale = broadcast(s.astype(np.float32), part, qp.axis, qp.block_size)
        zp = broadcast(z.astype(np.int64), part, qp.axis, qp.block_size)
        q = np.rint(part.astype(np.float32) / scale).astype(np.int64) + zp
        out[rows] = np.clip(q, qp.qtype.qmin, qp.qtype.qmax)
    return out


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale, in float32, a slice of rows at a time."""
    out = np.empty(np.shape(q), np.float32)
    for rows, part, s, z in _row_chunks(np.asarray(q), qp):
        scale = broadcast(s.astype(np.float32), part, qp.axis, qp.block_size)
        zp = broadcast(z.astype(np.int32), part, qp.axis, qp.block_size)
        out[rows] = (part.astype(np.int32) - zp).astype(np.float32) * scale
    return out


def _representable(scale: np.ndarray) -> np.ndarray:
    """A positive scale that float32 holds and that still covers the range: one under float32's smallest
    subnormal would round to a zero scale, which QuantizeLinear divides by; a subnormal one rounds to a few
    significant bits, so it is rounded up, not to nearest (found by make fuzz: [0, 3.3e-42] in int8 got a scale
    9 % short, the top of the range 9 steps out). Normal scales round to nearest as before (1 part in 2^24)."""
    info = np.finfo(np.float32)
    scale = np.where(scale > 0, np.maximum(scale, float(info.smallest_subnormal)), scale)
    near = np.asarray(scale).astype(np.float32)
    short = (near < scale) & (scale < float(info.smallest_normal))
    return np.where(short, np.nextafter(near, np.float32(np.inf)), near).astype(np.float64)


def from_range(
    rmin: np.ndarray,
    rmax: np.ndarray,
    qtype: QType,
    symmetric: bool,
    axis: int | None = None,
    block_size: int | None = None,
) -> QParams:
    """Scale/zero point covering [rmin, rmax] (widened to include 0, so 0 is exact)."""
    rmin = np.minimum(np.asarray(rmin, np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, np.float64), 0.0)
    if symmetric:
        # Symmetric: zero point at the middle; restricted range (-127..127 for int8) keeps it balanced.
        half = (qtype.qmax - qtype.qmin) // 2  # 127 for int8, 7 for int4
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        scale = absmax / half
        mid = 0 if qtype.signed else (qtype.qmax + 1) // 2
        zp = np.full(scale.shape, mid, np.int64)
    else:
        scale = _representable((rmax - rmin) / (qtype.qmax - qtype.qmin))
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.rint(qtype.qmin - rmin / safe), qtype.qmin, qtype.qmax).astype(np.int64)
    scale = np.where(scale > 0, _representable(scale), 1.0).astype(np.float32)  # all zero: any scale is exact
    return QParams(scale, zp.astype(qtype.np_dtype), qtype, axis, block_size)


def weight_qparams(
    w: np.ndarray, qtype: QType, symmetric: bool, axis: int | None = None, block_size: int | None = None
) -> QParams:
    """Per-tensor (axis None), per-channel (axis) or per-block (axis + block_size) ranges of a weight."""
    w = np.asarray(w).astype(np.float32, copy=False)  # min and max need no copy of a float32 weight
    if axis is None:
        return from_range(w.min(), w.max(), qtype, symmetric)
    axis = axis % w.ndim
    if block_size:
        n = w.shape[axis]
        nblocks = -(-n // block_size)
        pad = nblocks * block_size - n
        moved = np.moveaxis(w, axis, 0)
        if pad:
            edge = np.repeat(moved[-1:], pad, axis=0)  # repeat the last row: does not widen any range
            moved = np.concatenate([moved, edge], axis=0)
        blocks = moved.reshape(nblocks, block_size, *moved.shape[1:])
        rmin, rmax = np.moveaxis(blocks.min(axis=1), 0, axis), np.moveaxis(blocks.max(axis=1), 0, axis)
        if symmetric and qtype.signed:
            return _symmetric_full_range(rmin, rmax, qtype, axis, block_size)
        return from_range(rmin, rmax, qtype, symmetric, axis, block_size)
    others = tuple(i for i in range(w.ndim) if i != axis)
    return from_range(w.min(axis=others), w.max(axis=others), qtype, symmetric, axis)


def _symmetric_full_range(rmin, rmax, qtype: QType, axis: int, block_size: int) -> QParams:
    """Symmetric blocks that use all 2^b levels: the block's signed extreme maps exactly to qmin.

    The scale takes the sign that puts the extreme on qmin (-8 for int4), so the other side reaches
    at most qmax; with 4 bits that is 16 levels instead of 15. Scales may be negative, which
    DequantizeLinear allows.
    """
    rmin, rmax = np.asarray(rmin, np.float64), np.asarray(rmax, np.float64)
    extreme = np.where(np.abs(rmin) >= np.abs(rmax), rmin, rmax)
    scale = (extreme / qtype.qmin).astype(np.float32)
    scale = np.where(scale != 0, scale, np.float32(1.0)).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, qtype.np_dtype), qtype, axis, block_size)


def widen_scale(w: np.ndarray, p: QParams, floor: np.ndarray) -> tuple[np.ndarray, QParams]:
    """Raise per-channel weight scales to at least `floor` (keeping their sign) and requantize. Used where
    an int32 bias would overflow: only channels with near-zero weights are affected."""
    floor = floor.reshape(p.scale.shape) if p.scale.size == floor.size else np.float32(floor.max())
    scale = (np.sign(p.scale) + (p.scale == 0)) * np.maximum(np.abs(p.scale), floor)
    wide = QParams(scale.astype(np.float32), p.zero_point, p.qtype, p.axis, p.block_size)
    return quantize(w, wide), wide


def bias_scale_floor(bias: np.ndarray, x_scale: float) -> np.ndarray:
    """Smallest weight scale per output channel that keeps bias / (x_scale * w_scale) inside int32."""
    b = np.abs(np.asarray(bias, np.float64)).reshape(-1)
    return (b / (float(x_scale) * (2**31 - 1)) * (1 + 1e-6)).astype(np.float32)


def bias_qparams(x_scale: np.ndarray, w_scale: np.ndarray) -> QParams:
    """int32 bias with scale = input scale * weight scale (what QLinearConv / QGemm assume)."""
    scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    axis = None if scale.ndim == 0 or scale.size == 1 else 0
    return QParams(
        scale.reshape(-1) if axis == 0 else scale.reshape(()),
        np.zeros(scale.shape if axis == 0 else (), np.int32),
        INT32,
        axis,
    )


def db(signal: float, noise: float) -> float:
    """Signal-to-noise ratio in dB from summed squares (inf when there is no noise)."""
    return float("inf") if noise == 0 else float(10.0 * np.log10(max(signal, 1e-30) / noise))


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    m = NoiseMeter()
    m.add(ref, approx)
    return m.db


class NoiseMeter:
    """Streaming SQNR: summed squares of a reference and of its error over any number of batches."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, ref: np.ndarray, approx: np.ndarray) -> float:
        """Adds one batch; returns that batch's own SQNR (dB)."""
        r = np.asarray(ref, np.float64).ravel()
        e = r - np.asarray(approx, np.float64).ravel()
        signal, noise = float(r @ r), float(e @ e)
        self.signal += signal
        self.noise += noise
        return db(signal, noise)

    @property
    def db(self) -> float:
        return db(self.signal, self.noise)

    @property
    def relative_noise(self) -> float:
        """Noise power over signal power (0 when there is no signal)."""
        return self.noise / self.signal if self.signal else 0.0
