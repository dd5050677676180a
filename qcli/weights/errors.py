"""How far a quantized weight is from its float weight: the report's per-weight figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .blocks import BlockWeight
from .stats import WeightStats


@dataclass(frozen=True)
class WeightError:
    weight: float  # ||W - Q||^2 / ||W||^2
    output: float | None  # tr(E H E^T) / tr(W H W^T), E = W - Q: the output's error over its energy on calibration

    def to_dict(self) -> dict:
        return asdict(self)


def relative_errors(rows: np.ndarray, bw: BlockWeight, stats: WeightStats | None = None) -> WeightError:
    """Both errors of float rows [N, K] quantized as `bw`; the output error needs the input's statistics. A
    weight that carries AWQ's s (stats.scale) is compared as the model computes it: W / s against Q / s."""
    w = np.asarray(rows, np.float64)
    q = bw.dequantized().astype(np.float64)
    e = w - q
    output = None
    if stats is not None:
        signal = float(np.einsum("nk,nk->", w @ stats.h, w))
        output = float(np.einsum("nk,nk->", e @ stats.h, e)) / signal if signal > 0 else 0.0
    if stats is not None and stats.scale is not None:
        w, e = w / stats.scale, e / stats.scale
    norm = float(np.sum(w * w))
    return WeightError(float(np.sum(e * e)) / norm if norm > 0 else 0.0, output)
