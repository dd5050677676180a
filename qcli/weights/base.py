"""The weight-quantizer protocol: a float weight and its granularity in, integers and their QParams out.

Data-aware algorithms also take the statistics of the activation the weight reads (stats.WeightStats: H = X^T X
and mean |x| per input channel) and the options of the configuration (WeightOptions). Every algorithm quantizes
a weight with no statistics (a Gather table, W8A8's per-channel weights) by rounding to nearest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qcli.core.qparams import QTYPES, QParams, QType, widen_scale
from qcli.core.registry import Registry
from qcli.weights.stats import WeightStats


@dataclass(frozen=True)
class WeightOptions:
    clip_search: bool = False  # per block, the clipping ratio with the least (activation-weighted) error
    gptq_damp: float = 0.1  # gptq: diagonal damping, a fraction of the mean diagonal of H (as QuantConfig's)
    gptq_act_order: bool = False  # gptq: columns in order of decreasing H_kk

    @classmethod
    def of(cls, config) -> WeightOptions:
        """The options a QuantConfig sets."""
        return cls(
            bool(config.weight_only.clip_search),
            float(config.weight_only.gptq_damp),
            bool(config.weight_only.gptq_act_order),
        )


DEFAULT_OPTIONS = WeightOptions()
# Each algorithm registers with its `statistics` trait: "required" (it needs them for every MatMul/Gemm weight:
# without them it would silently round), "used" (it reads them where they are), or none.


class WeightQuantizer(Protocol):
    def __call__(
        self,
        w: np.ndarray,
        qtype: QType,
        symmetric: bool,
        axis: int | None,
        block_size: int | None,
        stats: WeightStats | None = None,  # of the activation the weight reads ([N, K] rows, axis 1, only)
        options: WeightOptions = DEFAULT_OPTIONS,
    ) -> tuple[np.ndarray, QParams]: ...


WEIGHT_ALGOS: Registry[WeightQuantizer] = Registry("weight algorithm")


def reads_statistics(algo: str, options: WeightOptions = DEFAULT_OPTIONS) -> bool:
    """Whether quantizing with `algo` (and these options) reads calibration statistics: a data-aware run."""
    return WEIGHT_ALGOS.trait(algo, "statistics") is not None or options.clip_search


def requires_statistics(algo: str) -> bool:
    return WEIGHT_ALGOS.trait(algo, "statistics") == "required"


def quantized_weight(value: np.ndarray, w) -> tuple[np.ndarray, QParams]:
    """The integers and parameters written for a weight as a plan's WeightQuant `w` says (its algorithm, axis,
    blocks, and the scale floor that keeps an int32 bias from overflowing)."""
    q, p = WEIGHT_ALGOS.get(w.algo)(value, QTYPES[w.qtype], w.symmetric, w.axis, w.block_size)
    if w.scale_floor is not None:
        q, p = widen_scale(value, p, np.array(w.scale_floor, np.float32))
    return q, p
