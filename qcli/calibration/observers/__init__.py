"""Range observers: streaming statistics over activations, one file per method, in a registry."""

from qcli.calibration.observers import auto, entropy, minmax, mse, percentile  # noqa: F401  (each registers its method)
from qcli.calibration.observers.base import OBSERVERS, Observer, ObserverSettings, TensorStats
from qcli.calibration.observers.histogram import Histogram, StreamingHistogram, expected_error
from qcli.core.errors import NonFiniteValues

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
