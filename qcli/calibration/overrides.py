"""Reading an overrides file (`--overrides FILE`, TOML) into core.overrides.Overrides; every mistake an
InputError naming the file and the entry. The file format is described in core/overrides.py."""

from __future__ import annotations

import sys
from pathlib import Path

from qcli.core.errors import InputError
from qcli.core.overrides import CalibMethod, NodeOverride, Overrides, Precision, TensorOverride, check_percentile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TENSOR_KEYS = {"calibrator", "percentile"}
_SECTIONS = {"tensors", "nodes"}


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
    for section in _SECTIONS:
        if not isinstance(data.get(section, {}), dict):
            raise InputError(f'{path}: "{section}" must be a table of [{section}."NAME"] entries')
    tensors = tuple(_tensor(path, k, v) for k, v in data.get("tensors", {}).items())
    return Overrides(tensors, tuple(_node(path, k, v) for k, v in data.get("nodes", {}).items()), str(path))


def _node(path: Path, pattern: str, entry) -> NodeOverride:
    where = f'{path}: [nodes."{pattern}"]'
    if not isinstance(entry, dict) or set(entry) != {"precision"}:
        raise InputError(f"{where} must hold exactly one key: precision = float | int8 | per-tensor | per-channel")
    try:
        return NodeOverride(pattern, Precision(entry["precision"]))
    except ValueError:
        known = ", ".join(p.value for p in Precision)
        raise InputError(f"{where}: unknown precision {entry['precision']!r} (known: {known})") from None


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
