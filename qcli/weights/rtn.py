"""Round to nearest: scales from each channel's/block's range, then QuantizeLinear. Needs no data; with
options.clip_search, each block's range is shrunk to the ratio with the least error (clip.py), weighted by
the input channels' energy when statistics are given."""

from __future__ import annotations

import numpy as np

from qcli.core import qparams as qp
from qcli.weights.base import DEFAULT_OPTIONS, WEIGHT_ALGOS, WeightOptions
from qcli.weights.clip import clip_params
from qcli.weights.stats import WeightStats


@WEIGHT_ALGOS.register("rtn")
def rtn(
    w: np.ndarray,
    qtype: qp.QType,
    symmetric: bool,
    axis: int | None,
    block_size: int | None,
    stats: WeightStats | None = None,
    options: WeightOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, qp.QParams]:
    if options.clip_search and w.ndim == 2 and axis in (1, -1) and block_size:
        p = clip_params(w, qtype, symmetric, block_size, None if stats is None else np.diag(stats.h))
    else:
        p = qp.weight_qparams(w, qtype, symmetric, axis, block_size)
    return qp.quantize(w, p), p
