"""Round to nearest: scales from each channel's/block's range, then QuantizeLinear. Needs no data."""

from __future__ import annotations

import numpy as np

from .. import qparams as qp
from .base import WEIGHT_ALGOS


@WEIGHT_ALGOS.register("rtn")
def rtn(
    w: np.ndarray,
    qtype: qp.QType,
    symmetric: bool,
    axis: int | None,
    block_size: int | None,
    inputs: np.ndarray | None = None,
) -> tuple[np.ndarray, qp.QParams]:
    p = qp.weight_qparams(w, qtype, symmetric, axis, block_size)
    return qp.quantize(w, p), p
