"""Entropy: the threshold T that minimises KL(P || Q) on the histogram of |x| (TensorRT's calibrator).

For each candidate i (bins kept): P = bins [0, i) with the mass beyond added to bin i - 1; Q = bins [0, i)
(without that mass) merged into L quantization bins (i // L bins each, the remainder in the last) and spread
evenly back over the bins where P is non-zero. T = i * bin width. Two-sided data is searched on |x| with
L = levels // 2 (half the levels on each side) and gives [max(min, -T), min(max, T)]; one-sided data (all >= 0
or all <= 0) uses all the levels on its one side. Exact zeros (ReLU) are left out: any range quantizes them
exactly. Every candidate is scored at once from prefix sums (vectorised). Isolated outliers are kept: where
P's last bin holds them and Q has nothing there, the divergence is infinite (as in TensorRT, no smoothing).
"""

from __future__ import annotations

import numpy as np

from qcli.calibration.observers.base import OBSERVERS, ObserverSettings
from qcli.calibration.observers.histogram import Histogram, HistogramObserver


def _xlogx(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


def kl_divergences(counts: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates i = levels .. len(counts), KL(P_i || Q_i) for each); inf where Q misses mass that P has."""
    r = np.asarray(counts, np.float64)
    size, total = r.size, float(r.sum())
    cand = np.arange(levels, size + 1)
    if cand.size == 0 or total == 0:
        return cand, np.zeros(cand.size)
    cum = np.concatenate([[0.0], np.cumsum(r)])
    nonzero = np.concatenate([[0], np.cumsum(r > 0)])
    plogp = np.concatenate([[0.0], np.cumsum(_xlogx(r))])
    out = total - cum[cand]  # mass beyond the threshold, added to P's last bin
    last = r[cand - 1] + out
    sum_plogp = plogp[cand - 1] + _xlogx(last)

    starts = np.arange(levels)[None, :] * (cand // levels)[:, None]
    ends = np.append(starts[:, 1:], cand[:, None], axis=1)
    s = cum[ends] - cum[starts]  # Q's mass per quantization bin
    c = (nonzero[ends] - nonzero[starts]).astype(np.float64)  # P's non-zero bins per quantization bin
    c[:, -1] += (r[cand - 1] == 0) & (out > 0)
    weight = s.copy()  # P's mass per quantization bin
    weight[:, -1] += out
    missing = ((weight > 0) & (s == 0)).any(axis=1) | (cum[cand] == 0)
    q_per_bin = np.where(s > 0, s / np.where(c > 0, c, 1.0), 1.0)
    cross = (weight * np.log(q_per_bin)).sum(axis=1)
    with np.errstate(divide="ignore"):
        kl = (sum_plogp - cross) / total - np.log(total) + np.log(cum[cand])
    return cand, np.where(missing, np.inf, np.maximum(kl, 0.0))


def threshold(counts: np.ndarray, width: float, levels: int) -> float:
    """T = i * width for the candidate with the least divergence (the smallest on ties); all bins if too few."""
    cand, kl = kl_divergences(counts, levels)
    if cand.size == 0 or not np.isfinite(kl).any():
        return counts.size * width
    return float(cand[int(np.argmin(kl))]) * width


def entropy_range(h: Histogram, settings: ObserverSettings) -> tuple[float, float]:
    two_sided = h.rmin < 0 < h.rmax
    levels = max(settings.levels // 2, 1) if two_sided else settings.levels
    counts, width = h.nonzero().magnitude(settings.bins)  # exact zeros are exact at any threshold
    t = threshold(counts, width, levels)
    if h.rmax <= 0:  # all <= 0: only the negative side exists
        return max(h.rmin, min(-t, h.rmax)), h.rmax
    lo = max(h.rmin, -t) if two_sided else h.rmin
    return lo, min(h.rmax, max(t, h.rmin))


@OBSERVERS.register("entropy")
class EntropyObserver(HistogramObserver):
    name = "entropy"
    range_of = staticmethod(entropy_range)
