"""Calibration and evaluation data -> validated feeds, one sample batch at a time.

Three layouts are accepted in a folder:
  (a) *.npy             single-input models; each file is one batch
  (b) *.npz             arrays named after the model inputs; each file is one batch
  (c) <sample>/<input>.npy  one folder per sample batch, one file per input
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from qcli.core.errors import InputError
from qcli.io.headers import header_feed


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int: static dim; str/None: dynamic


def input_specs(model: ModelProto, outputs: bool = False) -> list[InputSpec]:
    """The model's inputs (initializers aside), or with outputs=True its outputs, as name, dtype and shape."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.output if outputs else model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type or TensorProto.FLOAT))
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, dims))
    return specs


@dataclass
class FeedSource:
    """A folder of samples, validated lazily (one batch in memory at a time)."""

    folder: Path
    specs: list[InputSpec]
    limit: int | None = None
    model: str | None = None  # the model's name, for error messages
    # Other models the same data must fit, as (name, specs): compare's candidate.
    also: tuple[tuple[str, list[InputSpec]], ...] = ()

    def __post_init__(self) -> None:
        self.converted: set[tuple[str, str, str]] = set()  # (input, the data's dtype, the model's)
        self.items = _discover(self.folder, self.specs)
        self.items = spread(self.items, self.limit)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for item in self.items:
            yield self.load(item)

    unlabelled = None  # (raw sources: why class folders gave no labels)
    unused_recipe = None  # a recipe given with this (array) data: the warning that says so

    @property
    def labels_from(self) -> str | None:
        path = Path(self.folder) / "labels.npy"
        return str(path) if path.is_file() else None

    def labels(self) -> np.ndarray | None:
        """DIR/labels.npy: one integer class per sample of the folder's batches, in order (all of them only)."""
        path = Path(self.folder) / "labels.npy"
        if not path.is_file():
            return None
        try:
            labels = np.load(path, allow_pickle=False)
        except Exception as e:
            raise InputError(f"cannot read {path} ({type(e).__name__}: {e})") from e
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise InputError(f"{path} must hold one integer class per sample (got {labels.dtype} {list(labels.shape)})")
        return labels.astype(np.int64)

    def check(self) -> None:
        """Every file's arrays against the model(s), from the file headers (before any work; values are checked
        as each batch is read)."""
        memory = physical_memory()
        for item in self.items:
            feed = header_feed(item, self.specs)
            need = sum(a.nbytes for a in feed.values())  # stand-ins: the declared size, nothing allocated
            if memory and need > memory:
                raise InputError(
                    f"{item}: one batch declares {_size(need)} of arrays, more than this machine's "
                    f"{_size(memory)} of memory; split it into smaller batches"
                )
            for name, specs in ((self.model, self.specs), *self.also):
                validate(feed, specs, item, name, headers_only=True)

    def load(self, item: Path) -> dict[str, np.ndarray]:
        feed = _read(item, self.specs)
        validate(feed, self.specs, item, self.model, self.converted)
        for name, specs in self.also:
            validate(feed, specs, item, name, self.converted)
        return feed


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def physical_memory() -> int | None:
    """The machine's memory in bytes (None where the system does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def conversion_notes(*sources) -> list[str]:
    """A note per input whose data was converted to the model's dtype (float64 arrays for a float32 input)."""
    seen = sorted({c for s in sources if s is not None for c in getattr(s, "converted", ())})
    return [f"input {name!r}: the data is {was}, converted to the model's {to}" for name, was, to in seen]


def source_warnings(*sources) -> list[str]:
    """What the user gave that the data did not use (a recipe beside arrays), once per message."""
    found = [getattr(s, "unused_recipe", None) for s in sources if s is not None]
    return list(dict.fromkeys(w for w in found if w))


def spread(items: list, limit: int | None) -> list:
    """`limit` items evenly spread over the list (all of them when it holds no more), in order."""
    if limit is None or limit >= len(items):
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]


def _discover(folder: Path, specs: list[InputSpec]) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"data folder not found: {folder}")
    npy = sorted(p for p in folder.glob("*.npy") if p.name != "labels.npy")  # labels.npy: the samples' classes
    npz = sorted(folder.glob("*.npz"))
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.npy")))
    kinds = [k for k, v in (("*.npy", npy), ("*.npz", npz), ("sample folders", dirs)) if v]
    if not kinds:
        raise InputError(f"{folder} holds no *.npy, *.npz or <sample>/<input>.npy data")
    if len(kinds) > 1:
        raise InputError(f"{folder} mixes {' and '.join(kinds)}; use one layout per folder")
    if npy and len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise InputError(
            f"{folder} holds bare .npy files but the model has {len(specs)} inputs ({names}); "
            "use .npz files with arrays named after the inputs, or one folder per sample"
        )
    return npy or npz or dirs


def _read(item: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    try:
        if item.is_dir():
            return {p.stem: np.load(p, allow_pickle=False) for p in sorted(item.glob("*.npy"))}
        if item.suffix == ".npz":
            with np.load(item, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return {specs[0].name: np.load(item, allow_pickle=False)}
    except Exception as e:
        raise InputError(f"cannot read {item} as numpy data ({type(e).__name__}: {e})") from e


def validate(
    feed: dict[str, np.ndarray],
    specs: list[InputSpec],
    where: Path,
    model: str | None = None,
    converted: set[tuple[str, str, str]] | None = None,
    headers_only: bool = False,
) -> None:
    """Check one batch against a model's inputs (names, dtype, rank, static dims, finite values); a dtype of the
    same kind is converted, and noted in `converted` as (input, from, to). headers_only: the arrays are
    stand-ins (headers.py): no conversion, no look at the values."""
    the_model = model or "the model"
    wanted = {s.name for s in specs}
    missing, extra = wanted - feed.keys(), feed.keys() - wanted
    if missing or extra:
        raise InputError(
            f"{where}: inputs do not match {the_model}: missing {sorted(missing) or 'none'}, "
            f"unexpected {sorted(extra) or 'none'} ({the_model}'s inputs are {sorted(wanted)})"
        )
    for s in specs:
        a = feed[s.name]
        if a.dtype != s.dtype:
            if headers_only and np.can_cast(a.dtype, s.dtype, "same_kind") and a.dtype.kind == s.dtype.kind:
                pass
            elif np.can_cast(a.dtype, s.dtype, "same_kind") and a.dtype.kind == s.dtype.kind:
                feed[s.name] = a.astype(s.dtype)  # e.g. float64 -> float32, int32 -> int64
                if converted is not None:
                    converted.add((s.name, a.dtype.name, s.dtype.name))
            else:
                raise InputError(f"{where}: input {s.name!r} is {a.dtype}, {the_model} expects {s.dtype}")
        if s.shape and a.ndim != len(s.shape):
            raise InputError(
                f"{where}: input {s.name!r} has shape {list(a.shape)} (rank {a.ndim}); {the_model} expects "
                f"rank {len(s.shape)} {_fmt(s.shape)}"
            )
        for i, (got, want) in enumerate(zip(a.shape, s.shape)):
            if isinstance(want, int) and want > 0 and got != want:
                raise InputError(
                    f"{where}: input {s.name!r} has shape {list(a.shape)}; dimension {i} must be {want} "
                    f"({the_model} expects {_fmt(s.shape)})"
                )
        if not headers_only and a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InputError(f"{where}: input {s.name!r} contains NaN or Inf values; clean the data first")


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"


@dataclass(frozen=True)
class FidelityData:
    """Where fidelity and latency figures come from: these files of this source, described for the report."""

    src: FeedSource | None
    items: list[Path]
    desc: str
    in_sample: bool = False  # the files the ranges were fitted on (fewer than 5 calibration files, no --eval)

    def labels(self) -> np.ndarray | None:
        """The samples' classes, where the source has labels and these are all of its files, in order."""
        if self.src is None or list(self.items) != list(self.src.items):
            return None
        return self.src.labels()

    def feeds(self, advance: Callable[[], None] = lambda: None) -> Iterator[dict[str, np.ndarray]]:
        for item in self.items:
            yield self.src.load(item)
            advance()


def synthetic_feed(specs) -> dict:
    """One input per spec for timing: dynamic dimensions 1 (the first) or 32, floats from a fixed normal
    stream, integers 1 (a valid token id, index or mask value)."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else (1 if i == 0 else 32) for i, d in enumerate(spec.shape))
        if spec.dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.ones(shape, spec.dtype)
    return feed
