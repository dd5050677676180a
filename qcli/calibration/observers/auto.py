"""Auto: one histogram, the range of every method computed from it, the one with the least expected error."""

from __future__ import annotations

import numpy as np

from qcli.calibration.observers.base import OBSERVERS, ObserverSettings
from qcli.calibration.observers.entropy import entropy_range
from qcli.calibration.observers.histogram import Histogram, HistogramObserver, expected_error
from qcli.calibration.observers.minmax import minmax_range
from qcli.calibration.observers.mse import mse_range
from qcli.calibration.observers.percentile import percentile_range

# In order of preference on ties (simplest first).
CANDIDATES = {"minmax": minmax_range, "percentile": percentile_range, "entropy": entropy_range, "mse": mse_range}


def auto_pick(h: Histogram, settings: ObserverSettings) -> tuple[str, float, float]:
    """(winning method, lo, hi): the candidate range with the least histogram.expected_error."""
    ranges = {name: fn(h, settings) for name, fn in CANDIDATES.items()}
    lo, hi = np.array(list(ranges.values())).T
    best = int(np.argmin(expected_error(h, lo, hi, settings.levels)))
    name = list(ranges)[best]
    return name, *ranges[name]


@OBSERVERS.register("auto")
class AutoObserver(HistogramObserver):
    name = "auto"

    def __init__(self, settings: ObserverSettings | None = None) -> None:
        super().__init__(settings)
        self._pick: tuple[str, float, float] | None = None

    def update(self, x: np.ndarray) -> None:
        super().update(x)
        self._pick = None

    def _picked(self) -> tuple[str, float, float]:
        if self._pick is None:
            h = self.hist.snapshot()
            self._pick = ("minmax", 0.0, 0.0) if h is None else auto_pick(h, self.settings)
        return self._pick

    def range(self) -> tuple[float, float]:
        _, lo, hi = self._picked()
        return float(lo), float(hi)

    def chosen(self) -> str:
        return self._picked()[0]
