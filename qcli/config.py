"""Configuration: frozen dataclasses and str Enums. CLI defaults are read from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum


class Scheme(str, Enum):
    W8A8 = "w8a8"  # static: int8 weights, 8-bit activations, QDQ
    W4A16 = "w4a16"  # weight-only int4, block-wise; activations stay float


class CalibMethod(str, Enum):
    MINMAX = "minmax"


class WeightAlgo(str, Enum):
    RTN = "rtn"


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides how a model is quantized. Saved (versioned) in every report."""

    scheme: Scheme = Scheme.W8A8
    # W8A8
    per_channel: bool = True
    activation_symmetric: bool = False  # False: uint8 asymmetric; True: int8 symmetric
    # 7-bit weights so uint8 x int8 products cannot saturate on x86 CPUs without VNNI.
    # None: decide from the CPU quantizing (see hostcpu.py); the report records the choice.
    reduce_range: bool | None = None
    calibrator: CalibMethod = CalibMethod.MINMAX
    calib_limit: int | None = None
    # Cost model: an int8 op whose inputs/outputs must be converted from/to float is kept float when it
    # does fewer than this many multiply-accumulates per converted element (the Q/DQ would cost more than
    # the integer kernel wins).
    min_macs_per_conversion: float = 48.0
    # Accuracy guard: compute ops reading an activation that quantizes (alone, per tensor) to fewer dB than
    # this stay float. Well-spread tensors give 35-45 dB; outlier-dominated ones (BERT LayerNorm/GELU) ~20.
    min_activation_sqnr: float = 22.0
    fold_batchnorm: bool = True
    # W4A16
    block_size: int = 32
    weight_symmetric_int4: bool = True
    weight_algo: WeightAlgo = WeightAlgo.RTN
    # Both
    exclude: tuple[str, ...] = field(default_factory=tuple)  # node names or op types kept float

    VERSION = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d = {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}
        d["exclude"] = list(self.exclude)
        return {"version": self.VERSION, **d}


DEFAULT = QuantConfig()
