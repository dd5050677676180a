"""Per-tensor overrides from a small TOML file (`--overrides FILE`), recorded in the plan.

    # the calibration method (and its parameter) for activations whose name matches; globs allowed
    [tensors."/encoder/layer.*/output/LayerNorm_output_0"]
    calibrator = "percentile"
    percentile = 99.9

    [tensors."logits"]
    calibrator = "minmax"

Keys are tensor names or fnmatch globs; the first matching entry, in file order, wins. The file is a
table of sections so that per-node precision (a `[nodes."..."]` section) can join it later without
changing what is already written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from enum import Enum
from fnmatch import fnmatchcase
from pathlib import Path

from .errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    AUTO = "auto"  # per tensor, whichever method gives the least expected quantization error


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
class Overrides:
    tensors: tuple[TensorOverride, ...] = field(default_factory=tuple)
    source: str | None = None  # the file they were read from

    def for_tensor(self, name: str) -> TensorOverride | None:
        return next((o for o in self.tensors if o.pattern == name or fnmatchcase(name, o.pattern)), None)

    def unmatched(self, names) -> list[str]:
        names = list(names)
        return [o.pattern for o in self.tensors if not any(o.pattern == n or fnmatchcase(n, o.pattern) for n in names)]

    def to_dict(self) -> dict:
        return {"source": self.source, "tensors": [o.to_dict() for o in self.tensors]}

    def __bool__(self) -> bool:
        return bool(self.tensors)


_TENSOR_KEYS = {"calibrator", "percentile"}
_SECTIONS = {"tensors"}


def load(path: Path) -> Overrides:
    """Read and validate an overrides file: every mistake is an InputError naming the file and the entry."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"overrides file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read overrides file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"overrides file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise InputError(f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(sorted(_SECTIONS))})")
    tensors = data.get("tensors", {})
    if not isinstance(tensors, dict):
        raise InputError(f'{path}: "tensors" must be a table of [tensors."NAME"] entries')
    return Overrides(tuple(_tensor(path, k, v) for k, v in tensors.items()), str(path))


def _tensor(path: Path, pattern: str, entry) -> TensorOverride:
    where = f'{path}: [tensors."{pattern}"]'
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a table (calibrator = ..., percentile = ...)")
    unknown = sorted(set(entry) - _TENSOR_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TENSOR_KEYS))})")
    method = entry.get("calibrator")
    if method is not None:
        try:
            method = CalibMethod(method)
        except ValueError:
            known = ", ".join(m.value for m in CalibMethod)
            raise InputError(f"{where}: unknown calibrator {method!r} (known: {known})") from None
    p = entry.get("percentile")
    if p is not None:
        if not isinstance(p, int | float) or isinstance(p, bool):
            raise InputError(f"{where}: percentile must be a number (got {p!r})")
        p = check_percentile(p, f"{where} percentile")
        if method not in (None, CalibMethod.PERCENTILE):
            raise InputError(f'{where}: percentile only applies to calibrator = "percentile"')
        method = CalibMethod.PERCENTILE
    if method is None:
        raise InputError(f"{where} sets nothing: give calibrator (and percentile)")
    return TensorOverride(pattern, method, p)
