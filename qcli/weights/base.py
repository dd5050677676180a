"""The weight-quantizer protocol: a float weight and its granularity in, integers and their QParams out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..qparams import QParams, QType
from ..registry import Registry


class WeightQuantizer(Protocol):
    def __call__(
        self,
        w: np.ndarray,
        qtype: QType,
        symmetric: bool,
        axis: int | None,
        block_size: int | None,
        inputs: np.ndarray | None = None,  # calibration activations feeding this weight (data-aware algorithms)
    ) -> tuple[np.ndarray, QParams]: ...


WEIGHT_ALGOS: Registry[WeightQuantizer] = Registry("weight algorithm")
