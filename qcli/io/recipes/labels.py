"""Class labels for raw files in class folders (DIR/<class>/...): folder names -> the model's output indices,
from a labels.txt beside the folders (one class name a line, line k is index k), integer folder names, or
the class names in the model's metadata (a JSON or Python literal list / {index: name} dict under "classes",
"labels", "names" or "class_names")."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from qcli.core.errors import InputError

METADATA_KEYS = ("classes", "labels", "names", "class_names")


def class_index(folder: Path, classes: list[str], metadata: dict[str, str]) -> tuple[dict[str, int] | None, str]:
    """(class folder name -> index, where the mapping came from); (None, why not) when nothing maps them."""
    if not classes:
        return None, "no class folders"
    listed = Path(folder) / "labels.txt"
    if listed.is_file():
        names = [ln.strip() for ln in listed.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return _match(classes, names, f"{listed}"), str(listed)
    if all(c.isdigit() for c in classes):
        return {c: int(c) for c in classes}, "integer folder names"
    for key in METADATA_KEYS:
        names = _metadata_names(metadata.get(key))
        if names:
            return _match(classes, names, f"the model's metadata {key!r}"), f"the model's metadata {key!r}"
    return None, "class folders, but no labels.txt beside them, integer names, or class names in the model"


def _match(classes: list[str], names: list[str], where: str) -> dict[str, int]:
    index = {n: i for i, n in enumerate(names)}
    missing = [c for c in classes if c not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"class folder(s) {shown} not among the {len(names)} class names of {where}")
    return {c: index[c] for c in classes}


def _metadata_names(text: str | None) -> list[str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)  # literals only: never code
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, dict):
        try:
            pairs = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            return None
        out = [""] * (pairs[-1][0] + 1) if pairs else []
        for k, v in pairs:
            out[k] = v
        return out
    return None
