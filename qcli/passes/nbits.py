"""onnxruntime's weight-only operators (domain com.microsoft), packed the way its CPU kernels read them.

MatMulNBits(A, B, scales[, zero_points]), attributes K, N, bits, block_size[, accuracy_level]:
  B            uint8 [N, k_blocks, block_size * bits / 8]: each row's codes along K, low bits first, K padded
               to whole blocks (the K attribute stays the true K); unsigned codes: symmetric ones are stored
               + 2^(bits-1), the default zero point, so no zero_points input is written
  scales       float [N, k_blocks]
  zero_points  uint8 [N, ceil(k_blocks * bits / 8)], packed like B (asymmetric only)
GatherBlockQuantized(data, indices, scales[, zero_points]), gather_axis 0, quantize_axis 1 (along the row):
  4 bits: data int4/uint4 [rows, D], zero points of the same type [rows, k_blocks]; 8 bits: data uint8, symmetric
  codes + 128 (the default zero point for uint8 data), or uint8 codes with uint8 zero points.
A table tied to a Gemm(transB=1) reader shares its scales with the MatMulNBits.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, helper

from qcli.core.errors import InputError
from qcli.passes.weight_only import Key, Rewriter
from qcli.weights import BlockWeight

MS = "com.microsoft"
FP32, INT8 = 0, 4  # accuracy levels: 0 = A is not quantized (fp32 compute); 4 = A quantized to int8 per block
LEVELS = range(5)  # 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes [rows, L] (L * bits a multiple of 8) -> uint8 [rows, L * bits / 8], low bits first."""
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(codes.shape[0], -1, per)
    out = np.zeros(c.shape[:2], np.uint8)
    for i in range(per):
        out |= c[:, :, i] << np.uint8(bits * i)
    return out


def unsigned_codes(w: BlockWeight) -> np.ndarray:
    """[N, k_blocks * block_size] codes as MatMulNBits reads them: symmetric ones shifted by 2^(bits-1); the
    padding past K holds each row's zero point (it dequantizes to 0)."""
    offset = 1 << (w.bits - 1) if w.symmetric else 0
    padded = w.k_blocks * w.block_size
    out = np.empty((w.n, padded), np.int32)
    out[:, : w.k] = w.codes.astype(np.int32) + offset
    out[:, w.k :] = offset if w.symmetric else w.params.zero_point[:, -1:].astype(np.int32)
    return out


def packed_weight(w: BlockWeight) -> np.ndarray:
    """MatMulNBits' B: uint8 [N, k_blocks, blob]."""
    return pack(unsigned_codes(w), w.bits).reshape(w.n, w.k_blocks, w.block_size * w.bits // 8)


def packed_zero_points(w: BlockWeight) -> np.ndarray:
    """MatMulNBits' zero_points: uint8 [N, ceil(k_blocks * bits / 8)]; odd counts padded with 0."""
    per = 8 // w.bits
    z = np.zeros((w.n, -(-w.k_blocks // per) * per), np.int32)
    z[:, : w.k_blocks] = w.params.zero_point.astype(np.int32)
    return pack(z, w.bits)


class OrtForm:
    def __init__(self, accuracy_level: int = FP32) -> None:
        if accuracy_level not in LEVELS:
            raise InputError(
                f"MatMulNBits accuracy level must be 0 .. 4 (0: fp32 compute, 4: int8), got {accuracy_level}"
            )
        self.level = int(accuracy_level)
        self.weights: dict[Key, list[str]] = {}
        self.tables: dict[Key, list[str]] = {}
        self.scales: dict[Key, str] = {}
        self.int4 = False

    def _scales(self, rw: Rewriter, w: BlockWeight, key: Key) -> str:
        if key not in self.scales:
            self.scales[key] = rw.init("ws", w.params.scale)
        return self.scales[key]

    def matmul(self, rw: Rewriter, a: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        if key not in self.weights:
            self.weights[key] = [rw.init("wq", packed_weight(w)), self._scales(rw, w, key)]
            if not w.symmetric:
                self.weights[key].append(rw.init("wz", packed_zero_points(w)))
        attrs = dict(K=w.k, N=w.n, bits=w.bits, block_size=w.block_size)
        if self.level:  # 0 is the attribute's default; onnxruntime's own quantizer leaves it out too
            attrs["accuracy_level"] = self.level
        rw.add("MatMulNBits", [a, *self.weights[key]], [out], name=name, domain=MS, **attrs)

    def gather(self, rw: Rewriter, ids: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        if key not in self.tables:
            if w.bits == 4:
                data, zp = w.codes, w.params.zero_point
                self.int4 = True
            else:
                data = w.codes.astype(np.int32) + (128 if w.symmetric else 0)
                data, zp = data.astype(np.uint8), w.params.zero_point.astype(np.uint8)
            self.tables[key] = [rw.init("e", data), self._scales(rw, w, key)]
            if not w.symmetric:
                self.tables[key].append(rw.init("ez", zp))
        table, scales, *zp_in = self.tables[key]
        attrs = dict(gather_axis=0, quantize_axis=1, block_size=w.block_size, bits=w.bits)
        rw.add("GatherBlockQuantized", [table, ids, scales, *zp_in], [out], name=name, domain=MS, **attrs)

    def finish(self, model: ModelProto) -> None:
        if not any(o.domain == MS for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS, 1))
        if self.int4:  # 4-bit tensor types need IR version 10
            model.ir_version = max(model.ir_version, 10)
