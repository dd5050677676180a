"""MinMax: the running minimum and maximum of everything seen (optionally a moving average of batch extremes)."""

from __future__ import annotations

import numpy as np

from qcli.calibration.observers.base import OBSERVERS, ObserverSettings, batch_extremes
from qcli.calibration.observers.histogram import Histogram


def minmax_range(h: Histogram, settings: ObserverSettings) -> tuple[float, float]:
    """The histogram's exact min and max (no clipping)."""
    return h.rmin, h.rmax


@OBSERVERS.register("minmax")
class MinMaxObserver:
    """Exact running min/max; with settings.moving_average = c, after the first batch lo += c * (batch_min - lo)
    and the same for hi (PyTorch's MovingAverageMinMaxObserver)."""

    def __init__(self, settings: ObserverSettings | None = None) -> None:
        self.settings = settings or ObserverSettings()
        self.lo = np.inf
        self.hi = -np.inf

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if not x.size:
            return
        lo, hi = batch_extremes(x)
        c = self.settings.moving_average
        if c is None or self.lo > self.hi:  # exact, or the first batch
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        else:
            self.lo += c * (lo - self.lo)
            self.hi += c * (hi - self.hi)

    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:  # never saw data
            return 0.0, 0.0
        return float(self.lo), float(self.hi)

    def chosen(self) -> str:
        return "minmax"
