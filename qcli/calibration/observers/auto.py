"""One histogram, ranges of several methods computed from it: `least-error` takes the one with the least
expected error per tensor; `auto` offers candidates (candidates(): minmax, mse, finer clipping points) to the
search at the model's outputs (schemes/w8a8/ranges.py), which sets the range."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qcli.calibration.observers.base import OBSERVERS, ObserverSettings
from qcli.calibration.observers.entropy import entropy_range
from qcli.calibration.observers.histogram import Histogram, HistogramObserver, expected_error
from qcli.calibration.observers.minmax import minmax_range
from qcli.calibration.observers.mse import mse_range
from qcli.calibration.observers.percentile import percentile_range

# In order of preference on ties (simplest first).
CANDIDATES = {"minmax": minmax_range, "percentile": percentile_range, "entropy": entropy_range, "mse": mse_range}
SEARCHED_PERCENTILES = (99.999, 99.99, 99.9)  # clipping points offered to the search beside the methods


def auto_pick(h: Histogram, settings: ObserverSettings) -> tuple[str, float, float]:
    """(winning method, lo, hi): the candidate range with the least histogram.expected_error."""
    ranges = {name: fn(h, settings) for name, fn in CANDIDATES.items()}
    lo, hi = np.array(list(ranges.values())).T
    best = int(np.argmin(expected_error(h, lo, hi, settings.levels)))
    name = list(ranges)[best]
    return name, *ranges[name]


@OBSERVERS.register("least-error")
class LeastErrorObserver(HistogramObserver):
    """Per tensor, whichever method's range has the least expected error (computed from the histogram)."""

    name = "least-error"

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


@OBSERVERS.register("auto")
class SearchObserver(HistogramObserver):
    """The candidates the search at the outputs chooses among (schemes/w8a8/ranges.py); minmax until it has."""

    name = "auto"

    def range(self) -> tuple[float, float]:
        h = self.hist.snapshot()
        return (0.0, 0.0) if h is None else minmax_range(h, self.settings)

    def chosen(self) -> str:
        return "minmax"

    def candidates(self) -> dict[str, tuple[float, float]]:
        """minmax, mse and the percentiles SEARCHED_PERCENTILES (as p99.99 ...), by name."""
        h = self.hist.snapshot()
        if h is None:
            return {}
        out = {"minmax": minmax_range(h, self.settings), "mse": mse_range(h, self.settings)}
        for p in SEARCHED_PERCENTILES:
            out[f"p{p:g}"] = percentile_range(h, replace(self.settings, percentile=p))
        return {k: (float(lo), float(hi)) for k, (lo, hi) in out.items()}
