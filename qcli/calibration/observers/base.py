"""The observer protocol: update(batch) many times, then range(). Memory must not grow with batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from qcli.core.errors import InputError, NonFiniteValues
from qcli.core.registry import Registry


@dataclass(frozen=True)
class ObserverSettings:
    """How an observer turns what it saw into a range."""

    percentile: float = 99.99  # "percentile": hi = the p-th percentile, lo = the (100-p)-th; 50 < p <= 100
    bins: int = 2048  # fine histogram resolution (array size; memory is O(bins) whatever the data)
    levels: int = 256  # quantization levels the range is split into (entropy, mse, auto)
    moving_average: float | None = None  # minmax only: EMA constant c in (0, 1] for lo/hi after the first batch

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile must be in (50, 100], got {self.percentile} (e.g. 99.99)")
        if not 16 <= self.bins <= 1 << 20:
            raise InputError(f"histogram bins must be in [16, {1 << 20}], got {self.bins} (e.g. 2048)")
        if not 2 <= self.levels <= 1 << 16:
            raise InputError(f"quantization levels must be in [2, 65536], got {self.levels} (256 for 8 bits)")
        if self.moving_average is not None and not 0.0 < self.moving_average <= 1.0:
            raise InputError(f"moving-average constant must be in (0, 1], got {self.moving_average} (e.g. 0.01)")


def batch_extremes(x: np.ndarray) -> tuple[float, float]:
    """Exact (min, max) of a non-empty batch; NonFiniteValues if it holds NaN or infinities."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if np.isnan(lo) or np.isnan(hi):
        raise NonFiniteValues("contains NaN")
    if np.isinf(lo) or np.isinf(hi):
        raise NonFiniteValues("contains infinite values")
    return lo, hi


@dataclass(frozen=True)
class TensorStats:
    """What calibration learned about one activation tensor."""

    rmin: float
    rmax: float
    shape: tuple[int, ...]  # shape seen in the first batch (for the cost model)
    batches: int
    method: str = "minmax"  # the method that set the range ("least-error": the winner)
    # `auto`: every candidate range by name, for the search at the outputs (not in the report)
    candidates: dict[str, tuple[float, float]] | None = field(default=None, compare=False, repr=False)
    # histogram observers: the values seen, as PLOT_BINS counts over [observed min, observed max] (for the
    # HTML report's pictures of the widest and most clipped ranges; not in the report's ranges)
    observed: tuple[float, float] | None = field(default=None, compare=False, repr=False)
    histogram: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "min": self.rmin,
            "max": self.rmax,
            "shape": list(self.shape),
            "batches": self.batches,
            "method": self.method,
        }


class Observer(Protocol):
    def __init__(self, settings: ObserverSettings = ...) -> None: ...

    def update(self, x: np.ndarray) -> None: ...

    def range(self) -> tuple[float, float]: ...

    def chosen(self) -> str: ...


OBSERVERS: Registry[type] = Registry("calibration method")
