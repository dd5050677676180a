"""Per-tensor and per-node overrides (`--overrides FILE`, read by calibration/overrides.py), recorded in the plan,
and the one matching rule for names, globs and op types (--exclude uses it too).

    # the calibration method (and its parameter) for activations whose name matches; globs allowed
    [tensors."/encoder/layer.*/output/LayerNorm_output_0"]
    calibrator = "percentile"
    percentile = 99.9

    [tensors."logits"]
    calibrator = "minmax"

    # the precision of nodes whose name (or glob, or op type) matches
    [nodes."/head/*"]
    precision = "float"          # float | int8 | per-tensor | per-channel

Keys are names, fnmatch globs (or, for nodes, op types); the first matching entry, in file order, wins.
`int8` keeps a Conv/MatMul/Gemm on int8 whatever the cost model and the accuracy guard say; `per-tensor` and
`per-channel` set its weight granularity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase

from qcli.core.errors import InputError


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    # the search at the model's outputs: of every candidate range (each method, finer clipping points), the one
    # that measures best there (schemes/w8a8/ranges.py); in an overrides file, least-error for that tensor
    AUTO = "auto"
    LEAST_ERROR = "least-error"  # per tensor, whichever method gives the least expected quantization error


def matches(pattern: str, name: str, op_type: str | None = None) -> bool:
    """The one matching rule for --exclude and override entries: the exact name, an fnmatch glob of the name,
    or (for nodes) the op type."""
    return pattern in (name, op_type) or fnmatchcase(name, pattern)


class Precision(str, Enum):
    FLOAT = "float"
    INT8 = "int8"
    PER_TENSOR = "per-tensor"  # int8, one weight scale for the tensor
    PER_CHANNEL = "per-channel"  # int8, one weight scale per output channel


PERCENTILE_MIN = 50.0  # a "percentile" range keeps at least this much of the mass (two-sided)


def check_percentile(p: float, where: str = "--percentile") -> float:
    if not (PERCENTILE_MIN < p <= 100.0):
        raise InputError(f"{where} must be above {PERCENTILE_MIN:g} and at most 100 (got {p:g})")
    return float(p)


@dataclass(frozen=True)
class TensorOverride:
    pattern: str  # a tensor name or a glob
    calibrator: CalibMethod | None = None
    percentile: float | None = None

    def to_dict(self) -> dict:
        d = {"pattern": self.pattern, "calibrator": self.calibrator.value if self.calibrator else None}
        return d | ({"percentile": self.percentile} if self.percentile is not None else {})


@dataclass(frozen=True)
class NodeOverride:
    pattern: str  # a node name, a glob or an op type
    precision: Precision

    def matches(self, name: str, op_type: str) -> bool:
        return matches(self.pattern, name, op_type)

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "precision": self.precision.value}


@dataclass(frozen=True)
class Overrides:
    tensors: tuple[TensorOverride, ...] = field(default_factory=tuple)
    nodes: tuple[NodeOverride, ...] = field(default_factory=tuple)
    source: str | None = None  # the file they were read from

    def for_tensor(self, name: str) -> TensorOverride | None:
        return next((o for o in self.tensors if matches(o.pattern, name)), None)

    def for_node(self, name: str, op_type: str) -> NodeOverride | None:
        return next((o for o in self.nodes if o.matches(name, op_type)), None)

    def unmatched(self, names) -> list[str]:
        names = list(names)
        return [o.pattern for o in self.tensors if not any(matches(o.pattern, n) for n in names)]

    def unmatched_nodes(self, nodes) -> list[str]:
        pairs = [(n.name, n.op_type) for n in nodes]
        return [o.pattern for o in self.nodes if not any(o.matches(*p) for p in pairs)]

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "tensors": [o.to_dict() for o in self.tensors],
            "nodes": [o.to_dict() for o in self.nodes],
        }

    def __bool__(self) -> bool:
        return bool(self.tensors or self.nodes)
