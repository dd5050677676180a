"""AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration",
sec. 3.2): scale each input channel of a weight by s_k = mean|x_k|^alpha before rounding, and the activation by
1 / s_k, which the float graph computes exactly (passes/awq.py folds it). Channels carrying large activations
get finer steps relative to their weights; alpha is searched on a grid per activation (every weight reading it
shares s) to minimise the output error against the float weights on the calibration statistics:

    err(alpha) = sum over readers of tr(E H E^T),  E = W - Q(W diag(s)) diag(s)^-1,  H = X^T X

alpha = 0 is s = 1, plain rtn: the choice is never worse than rtn on this measure.

Quantizing the scaled weights is then rounding to nearest (the registered "awq" algorithm), with the clipping
search when asked, on the statistics of X / s (WeightStats.scaled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcli.core import qparams as qp
from qcli.weights.base import DEFAULT_OPTIONS, WEIGHT_ALGOS, WeightOptions
from qcli.weights.rtn import rtn
from qcli.weights.stats import WeightStats

GRID = 20  # alpha = 0, 1/20, ..., 19/20 (the reference's grid)
S_MIN, S_MAX = 1e-4, 1e4  # s is kept where W s and X / s stay well inside float32


@dataclass(frozen=True)
class Reader:
    """One weight reading the activation: rows [N, K] and how they are quantized."""

    rows: np.ndarray
    qtype: qp.QType
    symmetric: bool
    block_size: int


@dataclass(frozen=True, eq=False)
class AwqChoice:
    alpha: float
    s: np.ndarray  # [K] float32, the per-input-channel factor (all ones: alpha 0, nothing to do)
    error: float  # sum of tr(E H E^T) over the readers at alpha
    rtn_error: float  # the same at alpha = 0 (plain rtn)


@WEIGHT_ALGOS.register("awq", statistics="used")
def awq(
    w: np.ndarray,
    qtype: qp.QType,
    symmetric: bool,
    axis: int | None,
    block_size: int | None,
    stats: WeightStats | None = None,
    options: WeightOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, qp.QParams]:
    """Rounding of the weight as it stands: passes/awq.py has already scaled it (awq_prepare)."""
    return rtn(w, qtype, symmetric, axis, block_size, stats, options)


def channel_scales(abs_mean: np.ndarray, alpha: float) -> np.ndarray:
    """s = mean|x|^alpha normalised to a geometric mean of max and min of 1 (float32). Channels calibration never
    exercised take the smallest exercised level, so that they are not shrunk to nothing."""
    x = np.asarray(abs_mean, np.float64)
    live = x > 0
    if not live.any():
        return np.ones(x.shape, np.float32)
    x = np.where(live, x, x[live].min())
    s = x**alpha
    s = s / np.sqrt(s.max() * s.min())
    return np.clip(s, S_MIN, S_MAX).astype(np.float32)


def effective_weight(r: Reader, s: np.ndarray) -> np.ndarray:
    """Q(W diag(s)) diag(s)^-1 [N, K] float64: the weight the scaled, rounded model computes with."""
    ws = (r.rows * s).astype(np.float32)
    p = qp.weight_qparams(ws, r.qtype, r.symmetric, 1, r.block_size)
    return qp.dequantize(qp.quantize(ws, p), p).astype(np.float64) / s.astype(np.float64)


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """tr(E H E^T) with E = w - q: the summed squared output error over the calibration rows."""
    e = np.asarray(w, np.float64) - q
    return float(np.einsum("nk,nk->", e @ h, e))


def search(readers: list[Reader], stats: WeightStats, grid: int = GRID) -> AwqChoice:
    """The alpha on the grid with the least summed output error of `readers` (they all read one activation)."""
    if any(r.rows.shape[1] != stats.k for r in readers):
        raise ValueError(f"every reader needs K = {stats.k} input channels")
    errors = []
    for i in range(grid):
        s = channel_scales(stats.abs_mean, i / grid)
        errors.append((sum(output_error(r.rows, effective_weight(r, s), stats.h) for r in readers), i, s))
    err, i, s = min(errors, key=lambda e: (e[0], e[1]))  # ties: the smaller alpha
    return AwqChoice(i / grid, s, err, errors[0][0])
