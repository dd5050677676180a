"""A data recipe: how raw files (images, text, ...) become a model's inputs, one table per input kind.

    [inputs.input]
    kind = "image"
    resize = 256
    crop = 224

A kind is one module registered in KINDS: a parser from its table (and the model's input specs) to a frozen
object that says which inputs it fills, which files it reads and how one sample of a file becomes arrays. A
recipe is checked against the model before any data is read: every key known, every input filled once, shapes
the recipe produces fitting the model's static dimensions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from qcli.core.errors import InputError
from qcli.core.registry import Registry
from qcli.io.feeds import InputSpec

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class InputKind(Protocol):
    kind: str

    @property
    def fills(self) -> tuple[str, ...]: ...  # the model inputs this table fills

    @property
    def suffixes(self) -> tuple[str, ...]: ...  # the files it reads (lower case, with the dot); () reads none

    def count(self, path: Path) -> int: ...  # samples in one file (1, or a text file's lines)

    def read(self, path: Path | None, index: int) -> dict[str, np.ndarray]: ...  # one sample, batch axis of 1

    def to_dict(self) -> dict: ...


class FillsOne:
    """A table that fills the one model input named `name`."""

    name: str

    @property
    def fills(self) -> tuple[str, ...]:
        return (self.name,)


class ReadsNoFile(FillsOne):
    """A table whose value comes from the recipe (or the steps before), not from the data files."""

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ()

    def count(self, path: Path) -> int:
        return 1


# name, table, the model's inputs by name, the folder relative paths start from -> the parsed table
Parser = Callable[[str, dict, dict[str, InputSpec], Path], InputKind]
KINDS: Registry[Parser] = Registry("recipe kind")


@dataclass(frozen=True)
class Recipe:
    tables: tuple[InputKind, ...]
    origin: str  # the recipe file, or what it was inferred from
    side_files: tuple[Path, ...] = ()  # files the tables read besides the data (tokenizer.json), hashed in reports
    origins: dict[str, str] = field(default_factory=dict)  # setting -> where it came from, when inferred

    @property
    def reader(self) -> InputKind:
        """The one table that reads the data files."""
        return next(t for t in self.tables if t.suffixes)

    def feed(self, path: Path, index: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for t in self.tables:
            out.update(t.read(path if t.suffixes else None, index))
        return out

    def to_dict(self) -> dict:
        return {
            "origin": self.origin,
            "inputs": {t.fills[0]: t.to_dict() for t in self.tables},
            "files": {str(p): sha256(p) for p in self.side_files},
            **({"settings_from": dict(self.origins)} if self.origins else {}),
        }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_recipe(path: Path, specs: list[InputSpec]) -> Recipe:
    """Read and check a recipe file against a model's inputs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe not found: {path}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"recipe {path} is not valid TOML: {e}") from e
    recipe = parse_recipe(doc, specs, path.parent, str(path))
    return Recipe(recipe.tables, str(path), (path, *recipe.side_files))


def parse_recipe(doc: dict, specs: list[InputSpec], base: Path, origin: str) -> Recipe:
    unknown = sorted(set(doc) - {"inputs"})
    if unknown:
        raise InputError(f"recipe {origin}: unknown top-level key {unknown[0]!r}; a recipe holds [inputs.NAME] tables")
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict) or not inputs or not all(isinstance(v, dict) for v in inputs.values()):
        raise InputError(f"recipe {origin}: no [inputs.NAME] table (one per model input, e.g. [inputs.input])")
    by_name = {s.name: s for s in specs}
    tables = []
    for name, table in inputs.items():
        if name not in by_name:
            raise InputError(
                f"recipe {origin}: [inputs.{name}] is not an input of the model (its inputs: {', '.join(by_name)})"
            )
        kind = table.get("kind")
        if not isinstance(kind, str):
            raise InputError(f'recipe {origin}: [inputs.{name}] has no kind (e.g. kind = "image")')
        tables.append(KINDS.get(kind)(name, {k: v for k, v in table.items() if k != "kind"}, by_name, base))
    recipe = Recipe(tuple(tables), origin, tuple(p for t in tables for p in getattr(t, "side_files", ())))
    check_complete(recipe, specs)
    return recipe


def check_complete(recipe: Recipe, specs: list[InputSpec]) -> None:
    """Every model input filled by exactly one table, and exactly one table reading the data files."""
    filled: dict[str, str] = {}
    for t in recipe.tables:
        for name in t.fills:
            if name in filled:
                raise InputError(f"recipe {recipe.origin}: input {name!r} is filled twice ({filled[name]}, {t.kind})")
            filled[name] = t.kind
    missing = [s.name for s in specs if s.name not in filled]
    if missing:
        raise InputError(
            f"recipe {recipe.origin}: no table fills input(s) {', '.join(missing)} "
            f'(add [inputs.{missing[0]}] with a kind, e.g. kind = "constant")'
        )
    readers = [t.kind for t in recipe.tables if t.suffixes]
    if len(readers) != 1:
        what = "no table reads the data files" if not readers else f"{len(readers)} tables read files ({readers})"
        raise InputError(f"recipe {recipe.origin}: {what}; one image or text table reads each sample")
