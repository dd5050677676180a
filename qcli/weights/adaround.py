"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): learn, per
weight element, whether to round down or up, so that the layer's output error on calibration data is least.

The scales and zero points are rounding to nearest's (or the clipping search's). Each element's value is
s (floor(w / s) + h(V)), h the rectified sigmoid clip(sigmoid(V) (ZETA - GAMMA) + GAMMA, 0, 1), V learned by
Adam on

    tr(E H E^T) / tr(E0 H E0^T) + LAMBDA x mean(1 - |2 h(V) - 1|^beta),    E = W - s (floor(W / s) + h(V))

H = X^T X + DAMP x mean(diag H) I (the statistics GPTQ reads: no activation is held), E0 the error of nearest
rounding. The regulariser, off for the first WARMUP of the iterations, then with beta annealed from 20 to 2,
drives every h to 0 or 1; the codes are then floor + (V >= 0) + z. The objective is a sum over output rows, so
each row keeps nearest rounding where its learned rounding does no better: never worse than rtn on this
measure. Elements whose up or down neighbour lies outside the code range keep the one code inside it.

Bounded cost: ITERATIONS steps, each one [N, K] x [K, K] product, or two through H's eigenvectors where the
calibration rows span fewer than K / 2 directions (MiniLM's FFN down-projection: a few hundred tokens for
K = 1536), and a few elementwise passes; slices of rows learn on threads. On MiniLM-L6 (int4 blocks of 32,
asymmetric, the bench's 24 calibration sentences): 300 iterations 37 s on 2 cores, cosine 0.9842 (rtn
0.9769, gptq 0.9866, gptq with act-order 0.9878); 200 iterations 0.9833, 500 0.9841; LAMBDA 1000 0.9843.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from qcli.core import qparams as qp
from qcli.weights.base import DEFAULT_OPTIONS, WEIGHT_ALGOS, WeightOptions
from qcli.weights.clip import clip_params
from qcli.weights.rtn import rtn
from qcli.weights.stats import WeightStats

ITERATIONS = 300
LEARNING_RATE = 0.01
LAMBDA = 100.0  # on the reconstruction term normalised to nearest rounding's error (1.0)
WARMUP = 0.2
BETA = (20.0, 2.0)
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's)
THREADS = max(1, min(4, os.cpu_count() or 1))  # row slices learned at once (numpy drops the GIL)
THREADED_SIZE = 1 << 16  # elements: smaller weights learn in one piece
SLICE_SIZE = 1 << 18  # elements of a slice at most (larger weights: more slices, THREADS at a time)
DAMP = 0.01  # of the mean of diag(H), added to its diagonal: channels the few calibration rows miss still count


@WEIGHT_ALGOS.register("adaround", statistics="required")
def adaround(
    w: np.ndarray,
    qtype: qp.QType,
    symmetric: bool,
    axis: int | None,
    block_size: int | None,
    stats: WeightStats | None = None,
    options: WeightOptions = DEFAULT_OPTIONS,
) -> tuple[np.ndarray, qp.QParams]:
    """Rows [N, K] in blocks, with statistics: learned rounding. Anything else (a Gather table): rtn."""
    if stats is None or w.ndim != 2 or axis not in (1, -1) or not block_size:
        return rtn(w, qtype, symmetric, axis, block_size, stats, options)
    w = np.asarray(w, np.float32)
    if options.clip_search:
        p = clip_params(w, qtype, symmetric, block_size, np.diag(stats.h))
    else:
        p = qp.weight_qparams(w, qtype, symmetric, 1, block_size)
    codes = learned_codes(w, stats.h, p, ITERATIONS)
    return codes.astype(qtype.np_dtype), p


def learned_codes(w: np.ndarray, h: np.ndarray, p: qp.QParams, iterations: int = ITERATIONS) -> np.ndarray:
    """Codes [N, K] (int64) of rows w [N, K] under QParams p (blocks along K), learned on H [K, K]."""
    n, k = w.shape
    factor = _factor(np.asarray(h, np.float64))  # L [K, r], L L^T = H
    delta = DAMP * float(np.mean(np.diag(h))) + 1e-30
    rows = _Rows(w, p, factor, delta)
    # the gradient's product: E (H + delta I), or E L L^T + delta E where L has fewer than K / 2 columns
    gram = (
        (factor.astype(np.float32), np.float32(delta))
        if 2 * factor.shape[1] < k
        else ((np.asarray(h, np.float64) + delta * np.eye(k)).astype(np.float32), None)
    )
    count = 1 if n * k < THREADED_SIZE else -(-max(THREADS, -(-n * k // SLICE_SIZE)) // THREADS) * THREADS
    step = -(-n // count)
    slices = [slice(a, a + step) for a in range(0, n, step)]
    norm = sum(float(rows.error(r, rows.nearest(r)).sum()) for r in slices)
    learn = _Learner(gram, -2.0 / (norm or 1.0), np.float32(LAMBDA / (n * k)), iterations)
    # Rows are independent: slices learn at once, each product on one BLAS thread (two threads' products each
    # on all cores slow both down); numpy's elementwise passes drop the GIL. Memory: a few copies of a slice.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(THREADS) as pool:
        return np.concatenate(list(pool.map(lambda r: rows.codes(r, learn), slices)))


class _Rows:
    """The weight's rows, slice by slice: the float values, their steps and zero points spread along K."""

    def __init__(self, w: np.ndarray, p: qp.QParams, factor: np.ndarray, delta: float) -> None:
        self.w, self.p, self.factor, self.delta = w, p, factor, delta

    def _spread(self, a: np.ndarray, r: slice) -> np.ndarray:
        return qp.broadcast(a, self.w[r], 1, self.p.block_size)

    def nearest(self, r: slice) -> np.ndarray:
        part = qp.QParams(self.p.scale[r], self.p.zero_point[r], self.p.qtype, 1, self.p.block_size)
        return qp.quantize(self.w[r], part).astype(np.int64)

    def error(self, r: slice, codes: np.ndarray) -> np.ndarray:
        """Per row: tr(E (H + delta I) E^T)."""
        s, z = (
            self._spread(self.p.scale[r], r).astype(np.float64),
            self._spread(self.p.zero_point[r].astype(np.int64), r),
        )
        e = self.w[r].astype(np.float64) - s * (codes - z)
        el = e @ self.factor
        return np.einsum("nr,nr->n", el, el) + self.delta * np.einsum("nk,nk->n", e, e)

    def codes(self, r: slice, learn: _Learner) -> np.ndarray:
        """The learned codes of rows r, or nearest rounding's on the rows where learning did no better."""
        qtype = self.p.qtype
        s, z = (
            self._spread(self.p.scale[r], r).astype(np.float64),
            self._spread(self.p.zero_point[r].astype(np.int64), r),
        )
        w = self.w[r].astype(np.float64)
        fl = np.floor(w / s)
        fixed = np.where(fl + 1 > qtype.qmax - z, 0, np.where(fl < qtype.qmin - z, 1, -1))  # one neighbour a code
        up = np.where(fixed >= 0, fixed, learn(w, s, fl, fixed))
        learned = np.clip(fl.astype(np.int64) + up + z, qtype.qmin, qtype.qmax)
        nearest = self.nearest(r)
        better = self.error(r, learned) < self.error(r, nearest)
        return np.where(better[:, None], learned, nearest)


class _Learner:
    """Adam on V for a slice of rows; returns 1 where the learned rounding goes up, 0 where down."""

    def __init__(self, gram, scale: float, reg: np.float32, iterations: int) -> None:
        self.gram, self.scale, self.reg, self.iterations = gram, scale, reg, iterations

    def __call__(self, w: np.ndarray, s: np.ndarray, fl: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        free = fixed < 0
        rest = np.clip(w / s - fl, 0.0, 1.0)
        frac = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
        v = np.log(frac / (1 - frac)).astype(np.float32)
        s32 = s.astype(np.float32)
        base = (w - s * np.where(fixed == 1, fl + 1, fl)).astype(np.float32)  # W - s floor (floor + 1 if fixed up)
        gscale = np.float32(self.scale) * s32  # d loss / d h = gscale x (the product below)
        mat, delta = self.gram
        m, u = np.zeros_like(v), np.zeros_like(v)
        b1, b2 = 0.9, 0.999
        warm = int(WARMUP * self.iterations)
        span = np.float32(ZETA - GAMMA)
        for t in range(1, self.iterations + 1):
            sig = 1.0 / (1.0 + np.exp(-v))
            raw = sig * span + np.float32(GAMMA)
            hv = np.clip(raw, 0.0, 1.0) * free
            e = base - s32 * hv  # W - s (floor + h)
            g = e @ mat if delta is None else (e @ mat) @ mat.T + delta * e  # d/dE of the error, halved
            g *= gscale
            if t > warm:
                beta = BETA[0] + (BETA[1] - BETA[0]) * (t - warm) / max(1, self.iterations - warm)
                c = 2 * hv - 1
                g -= (self.reg * 2 * beta) * np.abs(c) ** np.float32(beta - 1) * np.sign(c)  # of 1 - |2h - 1|^beta
            g *= sig * (1 - sig) * span * ((raw > 0) & (raw < 1) & free)  # d h / d V
            m = b1 * m + (1 - b1) * g
            u = b2 * u + (1 - b2) * g * g
            v -= np.float32(LEARNING_RATE / (1 - b1**t)) * m / (np.sqrt(u / np.float32(1 - b2**t)) + np.float32(1e-12))
        return (v >= 0).astype(np.int64)


def _factor(h: np.ndarray) -> np.ndarray:
    """L [K, r] with L L^T = h up to eigenvalues below 1e-7 of the largest (dropped): r < K where the
    calibration rows span fewer directions than K, which makes each step cheaper (the damping is added apart)."""
    vals, vecs = np.linalg.eigh(h)
    keep = vals > 1e-7 * max(float(vals[-1]), 1e-300)
    return vecs[:, keep] * np.sqrt(vals[keep])
