"""qcli: quantize ONNX models for CPUs (W8A8 static QDQ, W4A16 weight-only) and report what it cost."""

from qcli.core.config import DEFAULT, Int8Options, QuantConfig, Scheme, W8A8Options, WeightOnlyOptions
from qcli.core.errors import GateFailed, InputError, QcliError
from qcli.pipeline import compare, quantize

__all__ = [
    "quantize",
    "compare",
    "QuantConfig",
    "Int8Options",
    "W8A8Options",
    "WeightOnlyOptions",
    "Scheme",
    "DEFAULT",
    "QcliError",
    "InputError",
    "GateFailed",
]
__version__ = "0.1.0"
