"""Raw files read through a recipe, one sample per batch, in a deterministic order: the same interface as
feeds.FeedSource (items, load), so everything downstream streams raw data as it streams .npy batches.

A folder holds the files of the recipe's reading kind, either directly or in class folders (`DIR/<class>/...`,
whose labels labels.py maps to output indices); a single .txt/.jsonl file is a folder of its lines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec, spread, validate
from qcli.io.recipes.labels import class_index
from qcli.io.recipes.recipe import Recipe
from qcli.io.recipes.stream import StateFeeder

IGNORED = {"labels.txt", "labels.npy", "recipe.toml"}
MANY_SAMPLES = (".txt", ".jsonl", ".wav", ".flac")  # files that hold a sample per line or per frame


@dataclass(frozen=True)
class RawItem:
    path: Path
    index: int = 0  # the sample inside the file (a text file's line)
    label: int | None = None  # the class, from a class folder
    in_class_folder: bool = False

    @property
    def name(self) -> str:
        """How reports name the sample: the file (its class folder too), and the line of a text file."""
        name = f"{self.path.parent.name}/{self.path.name}" if self.in_class_folder else self.path.name
        return f"{name}:{self.index + 1}" if self.path.suffix.lower() in MANY_SAMPLES else name


class RawSource:
    def __init__(
        self,
        folder: Path,
        specs: list[InputSpec],
        recipe: Recipe,
        limit: int | None = None,
        model: str | None = None,
        also: tuple[tuple[str, list[InputSpec]], ...] = (),
        metadata: dict[str, str] | None = None,
        model_path: Path | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.folder, self.specs, self.recipe, self.model, self.also = Path(folder), specs, recipe, model, also
        files, folders, others = discover(self.folder, recipe.reader.suffixes, skip_other=skip_bad)
        # files that could not be read, with why (--skip-bad-files); files of another kind first
        self.skipped: list[str] = [f"{f}: not a kind the recipe reads" for f in others]
        self.converted: set[tuple[str, str, str]] = set()  # (input, from, to) dtype conversions
        if skip_bad:
            files = self._readable(files)
        stateful = any(t.kind == "state" for t in recipe.tables)
        self.stepper = StateFeeder(model_path, recipe) if stateful and model_path else None
        self.class_folders = sorted({f.parent.name for f in files}) if folders else []
        classes, why = class_index(self.folder, self.class_folders, metadata or {})
        # where the labels come from; or why class folders give none (a note, not silence)
        self.labels_from = why if classes else None
        self.unlabelled = why if self.class_folders and not classes else None
        self.items = [
            RawItem(f, i, classes.get(f.parent.name) if folders and classes else None, folders)
            for f in files
            for i in range(recipe.reader.count(f))
        ]
        if not self.items:
            raise InputError(f"{self.folder}: no samples (empty files)")
        self.items = spread(self.items, limit)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for item in self.items:
            yield self.load(item)

    def _readable(self, files: list[Path]) -> list[Path]:
        """The files whose first sample reads; the others noted in self.skipped."""
        kept = []
        for f in files:
            try:
                self.recipe.reader.read(f, 0)
                kept.append(f)
            except InputError as e:
                self.skipped.append(str(e))
        if not kept:
            raise InputError(f"{self.folder}: no readable files ({len(files)} skipped; the first: {self.skipped[0]})")
        return kept

    def check(self) -> None:
        """The first sample against the model(s), before any work (the recipe was checked against the model's
        inputs when it was read; the other files are read as the work goes)."""
        self.load(self.items[0])

    def load(self, item: RawItem) -> dict[str, np.ndarray]:
        if self.stepper is not None:
            feed = self.stepper.feed(item.path, item.index)
        else:
            feed = self.recipe.feed(item.path, item.index)
        validate(feed, self.specs, item.path, self.model, self.converted)
        for name, specs in self.also:
            validate(feed, specs, item.path, name, self.converted)
        return feed

    def labels(self) -> np.ndarray | None:
        """The class of every sample, in order, where the files sit in mapped class folders."""
        if not self.items or any(i.label is None for i in self.items):
            return None
        return np.array([i.label for i in self.items], np.int64)


def discover(path: Path, suffixes: tuple[str, ...], skip_other: bool = False) -> tuple[list[Path], bool, list[Path]]:
    """(the data files in a deterministic order; whether they sit in class folders; files of another kind,
    left out where `skip_other` (--skip-bad-files), else an error). A file given directly is its own list."""
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise InputError(f"{path}: the recipe reads {', '.join(suffixes)} files, not {path.suffix or 'this'}")
        return [path], False, []
    if not path.is_dir():
        raise InputError(f"data not found: {path}")
    entries = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.name not in IGNORED)
    dirs, loose = [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]
    if dirs and loose:
        raise InputError(
            f"{path} mixes files ({loose[0].name}) and folders ({dirs[0].name}); put every file in a class "
            "folder (DIR/<class>/...), or none"
        )
    files = (
        loose
        if not dirs
        else _round_robin([sorted(f for f in d.iterdir() if not f.name.startswith(".")) for d in dirs])
    )
    other = [f for f in files if f.suffix.lower() not in suffixes or not f.is_file()]
    if other and not skip_other:
        raise InputError(
            f"{path}: {other[0].relative_to(path)} is not a kind the recipe reads ({', '.join(suffixes)}); "
            "keep one kind of data per folder, or pass --skip-bad-files to leave such files out"
        )
    files = [f for f in files if f not in other]
    if not files:
        raise InputError(f"{path}: no {', '.join(suffixes)} files")
    return files, bool(dirs), other


def _round_robin(groups: list[list[Path]]) -> list[Path]:
    """Class folders' files interleaved (a1, b1, a2, b2, ...), so any evenly spread subset, and the fifth held
    aside from calibration, spans every class."""
    out: list[Path] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out
