"""A weight quantized in blocks along its reduction axis, held as rows [N, K]: one row per output feature
(MatMul/Gemm) or per table row (Gather), blocks of `block_size` along K, the last one possibly short. Both
weight-only forms (DequantizeLinear and onnxruntime's MatMulNBits / GatherBlockQuantized) write the same codes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qcli.core import qparams as qp
from qcli.weights.base import DEFAULT_OPTIONS, WEIGHT_ALGOS, WeightOptions
from qcli.weights.stats import WeightStats


@dataclass(frozen=True, eq=False)
class BlockWeight:
    codes: np.ndarray  # [N, K] in the qtype's numpy dtype (int4, uint4, int8, uint8)
    params: qp.QParams  # scale and zero point [N, k_blocks], axis 1
    symmetric: bool  # True: no zero point (signed codes, zero point 0)

    @property
    def qtype(self) -> qp.QType:
        return self.params.qtype

    @property
    def bits(self) -> int:
        return int(self.qtype.qmax - self.qtype.qmin + 1).bit_length() - 1

    @property
    def block_size(self) -> int:
        return int(self.params.block_size)

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def k(self) -> int:
        return int(self.codes.shape[1])

    @property
    def k_blocks(self) -> int:
        return -(-self.k // self.block_size)

    def dequantized(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(codes - zero point) * scale, [N, K] float32 (rows start:stop): the values every form computes with."""
        if start == 0 and stop is None:
            return qp.dequantize(self.codes, self.params)
        p = self.params
        part = replace(p, scale=p.scale[start:stop], zero_point=p.zero_point[start:stop])
        return qp.dequantize(self.codes[start:stop], part)


def quantize_rows(
    rows: np.ndarray,
    qtype: qp.QType,
    symmetric: bool,
    block_size: int,
    algo: str,
    stats: WeightStats | None = None,
    options: WeightOptions = DEFAULT_OPTIONS,
) -> BlockWeight:
    """Quantize a float [N, K] weight in blocks of `block_size` along K with the registered algorithm `algo`,
    given the statistics of the activation it reads (data-aware algorithms) and the options."""
    if rows.ndim != 2:
        raise ValueError(f"block quantization takes a 2-D [N, K] weight, got shape {rows.shape}")
    quantizer = WEIGHT_ALGOS.get(algo)
    codes, params = quantizer(rows.astype(np.float32), qtype, symmetric, 1, block_size, stats=stats, options=options)
    return BlockWeight(codes, params, symmetric)
