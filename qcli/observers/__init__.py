"""Range observers: streaming statistics over activations, one file per method, in a registry."""

from . import auto, entropy, minmax, mse, percentile  # noqa: F401  (each registers its method)
from .base import OBSERVERS, NonFiniteValues, Observer, ObserverSettings, TensorStats
from .histogram import Histogram, StreamingHistogram, expected_error

__all__ = [
    "OBSERVERS",
    "Histogram",
    "NonFiniteValues",
    "Observer",
    "ObserverSettings",
    "StreamingHistogram",
    "TensorStats",
    "expected_error",
]
