"""How far a quantized weight is from its float weight: the report's per-weight figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qcli.weights.blocks import BlockWeight
from qcli.weights.stats import WeightStats


@dataclass(frozen=True)
class WeightError:
    weight: float  # ||W - Q||^2 / ||W||^2
    output: float | None  # tr(E H E^T) / tr(W H W^T), E = W - Q: the output's error over its energy on calibration

    def to_dict(self) -> dict:
        return asdict(self)


CHUNK = 1 << 20  # elements per slice of rows: float64 temporaries of a few MB, not several times the weight


def relative_errors(rows: np.ndarray, bw: BlockWeight, stats: WeightStats | None = None) -> WeightError:
    """Both errors of float rows [N, K] quantized as `bw`; the output error needs the input's statistics. A
    weight that carries AWQ's s (stats.scale) is compared as the model computes it: W / s against Q / s.
    Summed over slices of rows (every figure is a sum over rows), so a 47 MB embedding table does not need
    half a GB of float64 temporaries."""
    sums = np.zeros(4)  # ||E||^2, ||W||^2 (AWQ-scaled), tr(E H E^T), tr(W H W^T)
    step = max(1, CHUNK // max(1, rows.shape[1]))
    for a in range(0, rows.shape[0], step):
        w = np.asarray(rows[a : a + step], np.float64)
        e = w - bw.dequantized(a, a + step).astype(np.float64)
        if stats is not None:
            sums[2] += float(np.einsum("nk,nk->", e @ stats.h, e))
            sums[3] += float(np.einsum("nk,nk->", w @ stats.h, w))
        if stats is not None and stats.scale is not None:
            w, e = w / stats.scale, e / stats.scale
        sums[0] += float(np.sum(e * e))
        sums[1] += float(np.sum(w * w))
    output = None if stats is None else (sums[2] / sums[3] if sums[3] > 0 else 0.0)
    return WeightError(sums[0] / sums[1] if sums[1] > 0 else 0.0, output)
