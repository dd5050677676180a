"""The observer protocol: update(batch) many times, then range(). Memory must not grow with batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..registry import Registry


@dataclass(frozen=True)
class TensorStats:
    """What calibration learned about one activation tensor."""

    rmin: float
    rmax: float
    shape: tuple[int, ...]  # shape seen in the first batch (for the cost model)
    batches: int

    def to_dict(self) -> dict:
        return {"min": self.rmin, "max": self.rmax, "shape": list(self.shape), "batches": self.batches}


class Observer(Protocol):
    def update(self, x: np.ndarray) -> None: ...

    def range(self) -> tuple[float, float]: ...


OBSERVERS: Registry[type] = Registry("calibration method")
