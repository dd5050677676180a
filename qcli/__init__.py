"""qcli: quantize ONNX models for CPUs (W8A8 static QDQ, W4A16 weight-only) and report what it cost."""

from .config import DEFAULT, QuantConfig, Scheme
from .errors import GateFailed, InputError, QcliError
from .pipeline import compare, quantize

__all__ = ["quantize", "compare", "QuantConfig", "Scheme", "DEFAULT", "QcliError", "InputError", "GateFailed"]
__version__ = "0.1.0"
