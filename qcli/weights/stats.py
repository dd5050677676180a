"""Second-order statistics of the activation a weight reads: what the data-aware algorithms (gptq, awq, the
activation-weighted clipping search) need instead of the activations themselves.

For y = x W^T with rows x of X [R, K] (every leading axis flattened), the output error of a quantized weight Q
is ||X (W - Q)^T||^2 = tr(E H E^T) with E = W - Q and H = X^T X [K, K]: H is all that is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcli.core.errors import NonFiniteValues


@dataclass(frozen=True, eq=False)
class WeightStats:
    h: np.ndarray  # [K, K] float64: sum over calibration rows of x^T x
    abs_mean: np.ndarray  # [K] float64: mean |x| per input channel
    rows: int  # how many activation rows (tokens, positions) were summed
    # [K] the per-input-channel factor s the stored weight already carries (AWQ: W diag(s), input X / s), or
    # None. h and abs_mean are then those of X / s; errors are reported on the stored weight divided by s.
    scale: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.abs_mean.shape[0])

    def scaled(self, s: np.ndarray) -> WeightStats:
        """The statistics of X / s, for a weight that absorbed diag(s) along K."""
        s = np.asarray(s, np.float64)
        prior = s if self.scale is None else self.scale * s
        return WeightStats(self.h / np.outer(s, s), self.abs_mean / s, self.rows, prior)

    def __add__(self, other: WeightStats) -> WeightStats:
        """Both inputs of a weight read by two MatMuls: the output errors add up, so do the statistics."""
        if other.k != self.k or self.scale is not None or other.scale is not None:
            raise ValueError("statistics of different input sizes, or of already scaled weights, do not add")
        rows = self.rows + other.rows
        mean = (self.abs_mean * self.rows + other.abs_mean * other.rows) / max(rows, 1)
        return WeightStats(self.h + other.h, mean, rows)


class StatsAccumulator:
    """Streams activation batches [..., K] into H = X^T X and sum |x|: memory 8 K^2 bytes, whatever the data."""

    def __init__(self) -> None:
        self._h: np.ndarray | None = None
        self._abs: np.ndarray | None = None
        self._rows = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("a MatMul input has at least one axis")
        k = x.shape[-1]
        if self._h is None:
            self._h, self._abs = np.zeros((k, k)), np.zeros(k)
        elif k != self._h.shape[0]:
            raise ValueError(f"the input channel count changed between batches: {self._h.shape[0]}, {k}")
        rows = x.reshape(-1, k).astype(np.float64)
        if not np.all(np.isfinite(rows)):
            raise NonFiniteValues("contains NaN or infinite values")
        self._h += rows.T @ rows
        self._abs += np.abs(rows).sum(axis=0)
        self._rows += rows.shape[0]

    def value(self) -> WeightStats:
        """The statistics so far (H is handed over, not copied: call once, after the last batch)."""
        if self._h is None or self._abs is None:
            raise ValueError("no batch was observed")
        return WeightStats(self._h, self._abs / max(self._rows, 1), self._rows)
