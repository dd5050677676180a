"""MinMax: the running minimum and maximum of everything seen."""

from __future__ import annotations

import numpy as np

from .base import OBSERVERS


@OBSERVERS.register("minmax")
class MinMaxObserver:
    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(np.min(x)))
            self.hi = max(self.hi, float(np.max(x)))

    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:  # never saw data
            return 0.0, 0.0
        return self.lo, self.hi
