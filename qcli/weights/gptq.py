"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", alg. 1): quantize a weight's input columns one at a time and spread each column's rounding error
over the columns not yet quantized, so that the output error ||X W^T - X Q^T||^2 stays small.

Rows [N, K] (blocks along K, as BlockWeight holds them); H = 2 X^T X + lambda I with lambda = damp x mean
diag(H). Input channels calibration never exercised (H_kk = 0) get H_kk = 1: nothing flows into or out of
them, so they are plainly rounded (the reference zeroes them, which throws away weights the calibration
never tested). U, the upper Cholesky factor of H^-1, gives each column's error feedback; updates to later
columns are applied lazily, BATCH columns at a time (the same arithmetic, fewer passes over W).

Each block's scale (and zero point) is set from the block's weights as they stand, updated by the error of
every column already quantized, when the first of its columns is reached. With activation order (columns by
decreasing H_kk) a block's columns are scattered: its scale is set when the first of them comes up.
"""

from __future__ import annotations

import numpy as np

from qcli.core import qparams as qp
from qcli.core.errors import InternalError
from qcli.weights.base import DEFAULT_OPTIONS, WEIGHT_ALGOS, WeightOptions
from qcli.weights.clip import clip_params
from qcli.weights.rtn import rtn
from qcli.weights.stats import WeightStats

BATCH = 128  # columns per lazy update (a multiple of the block size when blocks are larger)
DAMP_RETRIES = 4  # a Cholesky that fails (H numerically not positive definite) is retried with 10x the damping


@WEIGHT_ALGOS.register("gptq", statistics="required")
def gptq(
    w: np.ndarray,
    qtype: qp.QType,
    symmetric: bool,
    axis: int | None,
    block_size: int | None,
    stats: WeightStats | None = None,
    options: WeightOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, qp.QParams]:
    """Rows [N, K] with statistics: GPTQ. Anything else (no statistics: a Gather table; another layout): rtn."""
    if stats is None or w.ndim != 2 or axis not in (1, -1) or not block_size:
        return rtn(w, qtype, symmetric, axis, block_size, stats, options)
    if stats.k != w.shape[1]:
        raise InternalError(f"internal error: statistics of {stats.k} input channels for K = {w.shape[1]}")
    return quantize_gptq(w, stats.h, qtype, symmetric, block_size, options)


def inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """U, upper triangular, with U^T U = (H + damp x mean(diag H) I)^-1; dead channels get H_kk = 1 first.
    One factorisation: with J the reversal, J H J = M M^T gives H^-1 = (J M^-1 J)^T (J M^-1 J), and J M^-1 J
    is upper triangular with a positive diagonal, so it is U."""
    h = np.array(h, np.float64)
    k = h.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    lam = damp * float(np.mean(np.diag(h)))
    for _ in range(DAMP_RETRIES):
        try:
            m = np.linalg.cholesky(h[::-1, ::-1] + lam * np.eye(k))
            break
        except np.linalg.LinAlgError:
            lam *= 10.0
    else:
        raise InternalError(f"internal error: GPTQ's H is not positive definite even with damping {lam:g}")
    return np.triu(np.linalg.inv(m)[::-1, ::-1])  # exact zeros below the diagonal, whatever the pivoting


def quantize_gptq(
    w: np.ndarray, h: np.ndarray, qtype: qp.QType, symmetric: bool, block_size: int, options: WeightOptions
) -> tuple[np.ndarray, qp.QParams]:
    """(codes [N, K], QParams [N, k_blocks] axis 1) of rows w [N, K] given H = X^T X [K, K]."""
    n, k = w.shape
    nb = -(-k // block_size)
    diag = np.diag(h).astype(np.float64)
    perm = np.argsort(-diag, kind="stable") if options.gptq_act_order else np.arange(k)
    pos = np.argsort(perm)  # where each original column is quantized
    u = inverse_cholesky(2.0 * h[np.ix_(perm, perm)], options.gptq_damp)
    big = w.astype(np.float64)[:, perm]
    block_of = perm // block_size
    scale, zp = np.zeros((n, nb), np.float32), np.zeros((n, nb), np.int64)
    have = np.zeros(nb, bool)
    codes = np.zeros((n, k), np.int64)
    step = -(-max(BATCH, block_size) // block_size) * block_size
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        w1, u1 = big[:, i1:i2].copy(), u[i1:i2, i1:i2]
        err1 = np.zeros((n, i2 - i1))
        for i in range(i2 - i1):
            b = block_of[i1 + i]
            if not have[b]:
                cols = np.arange(b * block_size, min((b + 1) * block_size, k))
                cur = _current(big, w1, err1, u, i1, i, pos[cols])
                scale[:, b], zp[:, b] = _block_params(cur, qtype, symmetric, diag[cols], options.clip_search)
                have[b] = True
            q, dq = round_column(w1[:, i], scale[:, b], zp[:, b], qtype)
            codes[:, i1 + i] = q
            e = (w1[:, i] - dq) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        big[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = np.empty_like(codes)
    out[:, perm] = codes
    zero = zp.astype(qtype.np_dtype)
    return out.astype(qtype.np_dtype), qp.QParams(scale, zero, qtype, 1, block_size)


def _current(big, w1, err1, u, i1: int, i: int, positions: np.ndarray) -> np.ndarray:
    """The weights now at `positions` (none quantized yet): inside the batch from w1, after it from big less the
    batch's pending updates."""
    i2 = i1 + w1.shape[1]
    out = np.empty((big.shape[0], positions.size))
    inside = positions < i2
    out[:, inside] = w1[:, positions[inside] - i1]
    later = positions[~inside]
    if later.size:
        out[:, ~inside] = big[:, later] - err1[:, :i] @ u[i1 : i1 + i, later]
    return out


def _block_params(cur, qtype: qp.QType, symmetric: bool, h_diag, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point [N] of one block's current weights [N, B], as rtn (or the clipping search) sets them."""
    cur = cur.astype(np.float32)
    size = cur.shape[1]
    p = clip_params(cur, qtype, symmetric, size, h_diag) if clip else qp.weight_qparams(cur, qtype, symmetric, 1, size)
    return p.scale[:, 0], p.zero_point[:, 0].astype(np.int64)


def round_column(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qtype: qp.QType) -> tuple[np.ndarray, np.ndarray]:
    """(codes, dequantized float64) of one column, with QuantizeLinear's / DequantizeLinear's float32 arithmetic."""
    q = np.clip(np.rint(x.astype(np.float32) / scale).astype(np.int64) + zp, qtype.qmin, qtype.qmax)
    return q, ((q - zp).astype(np.float32) * scale).astype(np.float64)
