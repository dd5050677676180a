"""MSE: the clipping range with the least expected quantization error (histogram.expected_error).

Every pair (lo, hi) of bin edges, lo <= 0 <= hi, is scored at once: the error is clip_below(lo) +
clip_above(hi) + (mass inside) * (hi - lo)^2 / (12 (levels - 1)^2), a sum of seven products of a function of
lo and a function of hi, i.e. one small matrix product. The best pair is then refined on a sub-bin grid.
"""

from __future__ import annotations

import numpy as np

from qcli.calibration.observers.base import OBSERVERS, ObserverSettings
from qcli.calibration.observers.histogram import Histogram, HistogramObserver, clip_above, clip_below, expected_error

_REFINE = 32  # sub-steps across the two bins around each end of the best pair


def _candidates(edges: np.ndarray, keep: np.ndarray, fallback: float) -> np.ndarray:
    c = edges[keep]
    return c if c.size else np.array([fallback])


def edge_errors(h: Histogram, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo candidates, hi candidates, expected_error of every pair as a [lo, hi] matrix) over the bin edges."""
    edges = h.edges
    lo = _candidates(edges, edges <= min(0.0, h.rmax), h.rmin)
    hi = _candidates(edges, edges >= max(0.0, h.rmin), h.rmax)
    s, t = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    hz = h.nonzero()  # exact zeros cost nothing whatever the range
    err_lo, out_lo = clip_below(hz, s)
    err_hi, out_hi = clip_above(hz, t)
    k = 1.0 / (12.0 * (levels - 1) ** 2)
    a = k * (hz.total - out_lo)  # (a - k out_hi) (t - s)^2 + err_lo + err_hi, expanded into 7 products
    ones_s, ones_t = np.ones_like(s), np.ones_like(t)
    f = np.stack([err_lo + a * s * s, ones_s, a, -2 * a * s, -k * ones_s, 2 * k * s, -k * s * s], 1)
    g = np.stack([ones_t, err_hi, t * t, t, out_hi * t * t, out_hi * t, out_hi], 1)
    return lo, hi, (f @ g.T) / h.total


def _around(c: np.ndarray, i: int) -> np.ndarray:
    return np.linspace(c[max(i - 1, 0)], c[min(i + 1, c.size - 1)], 2 * _REFINE + 1)


def mse_range(h: Histogram, settings: ObserverSettings) -> tuple[float, float]:
    lo, hi, err = edge_errors(h, settings.levels)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    s, t = np.meshgrid(_around(lo, i), _around(hi, j), indexing="ij")
    s, t = np.append(s.ravel(), lo[i]), np.append(t.ravel(), hi[j])
    best = int(np.argmin(expected_error(h, s, t, settings.levels)))
    return float(s[best]), float(t[best])


@OBSERVERS.register("mse")
class MseObserver(HistogramObserver):
    name = "mse"
    range_of = staticmethod(mse_range)
