"""Percentile: hi = the p-th percentile, lo = the (100 - p)-th percentile of everything seen, from the histogram.

Each estimate is within one final bin width of np.percentile (linear interpolation) of all the data: the two
order statistics it interpolates between are each placed inside the bin that holds them.
"""

from __future__ import annotations

import numpy as np

from qcli.calibration.observers.base import OBSERVERS, ObserverSettings
from qcli.calibration.observers.histogram import Histogram, HistogramObserver


def order_statistics(h: Histogram, ranks: np.ndarray) -> np.ndarray:
    """Estimated x_(r) (0-based ranks) of the sorted data: spread evenly inside the bin that holds rank r
    (after its exact zeros); rank 0 and the last rank are the exact min and max."""
    ranks = np.asarray(ranks, np.float64)
    cum = np.cumsum(h.counts)
    b = np.minimum(np.searchsorted(cum, ranks, side="right"), h.counts.size - 1)
    edges = h.edges
    zeros = np.where(b == -h.start, h.zeros, 0.0)  # exact zeros are the smallest values of the bin [0, w)
    above = ranks - (cum[b] - h.counts[b]) - zeros  # rank among the bin's other values
    inside = (above + 0.5) / np.maximum(h.counts[b] - zeros, 1.0)
    est = np.where(above < 0, 0.0, edges[b] + (edges[b + 1] - edges[b]) * inside)
    est = np.where(ranks <= 0, h.rmin, np.where(ranks >= cum[-1] - 1, h.rmax, est))
    return np.clip(est, h.rmin, h.rmax)


def quantile(h: Histogram, q: float) -> float:
    """np.percentile(data, 100 q) (method "linear") estimated from the histogram, within one bin width."""
    pos = (h.total - 1) * q
    k = np.floor(pos)
    lo, hi = order_statistics(h, np.array([k, min(k + 1, h.total - 1)]))
    return float(lo + (pos - k) * (hi - lo))


def percentile_range(h: Histogram, settings: ObserverSettings) -> tuple[float, float]:
    p = settings.percentile
    if p >= 100:
        return h.rmin, h.rmax
    return quantile(h, 1 - p / 100), quantile(h, p / 100)


@OBSERVERS.register("percentile")
class PercentileObserver(HistogramObserver):
    name = "percentile"
    range_of = staticmethod(percentile_range)
