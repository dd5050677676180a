"""Data recipes: raw files (images, text, ...) -> a model's inputs, and the one place that opens a data path."""

from __future__ import annotations

from pathlib import Path

from qcli.core.errors import InputError
from qcli.io.feeds import FeedSource, InputSpec
from qcli.io.recipes import audio, constant, image, state, text  # noqa: F401  (register the kinds)
from qcli.io.recipes.infer import infer_recipe, starting_recipe
from qcli.io.recipes.recipe import KINDS, Recipe, load_recipe, parse_recipe
from qcli.io.recipes.source import RawItem, RawSource

__all__ = ["KINDS", "Recipe", "RawItem", "RawSource", "load_recipe", "parse_recipe", "open_source"]
__all__ += ["infer_recipe", "starting_recipe", "data_recipe", "is_array_data"]


def is_array_data(path: Path) -> bool:
    """A folder of .npy/.npz batches (or <sample>/<input>.npy folders): read as given, never through a recipe."""
    if not path.is_dir():
        return False
    if any(p.name != "labels.npy" for p in path.glob("*.np[yz]")):
        return True
    return any(p.is_dir() and any(p.glob("*.npy")) for p in path.iterdir())


def not_data(path: Path) -> str:
    """What a data path that qcli cannot read as given is, in words."""
    if path.is_dir():
        return f"{path} holds no .npy/.npz arrays"
    kind = path.suffix.lower()
    if kind in (".npy", ".npz"):
        return f"{path} is a single {kind} file: qcli reads a folder of them (put it in a folder, pass the folder)"
    if kind == ".onnx":
        return f"{path} is an ONNX model, not data"
    return f"{path} is a {kind or 'extensionless'} file, which qcli reads only through a recipe"


def open_source(
    data: Path,
    specs: list[InputSpec],
    model_path: Path,
    recipe: Path | None = None,
    limit: int | None = None,
    also: tuple[tuple[str, list[InputSpec]], ...] = (),
    metadata: dict[str, str] | None = None,
    skip_bad: bool = False,
    name: str | None = None,
) -> FeedSource | RawSource:
    """The batches at `data` for a model: .npy/.npz as they are; raw files through `recipe`, or through the
    recipe the files beside the model give (tokenizer.json, preprocessor_config.json)."""
    data, name = Path(data), name or Path(model_path).name  # `name`: the model's, in messages
    if not data.exists():
        raise InputError(f"data not found: {data}")
    if is_array_data(data):
        source = FeedSource(data, specs, limit, model=name, also=also)
        if recipe:  # checked all the same (a broken recipe is an error wherever it is given), then unused
            load_recipe(recipe, specs)
            source.unused_recipe = f"--recipe {recipe} not used for {data}: it holds .npy/.npz arrays, read as they are"
        return source
    r = load_recipe(recipe, specs) if recipe else infer_recipe(model_path, specs, data)
    if r is None:
        how = f"`qcli recipe {model_path} > recipe.toml`, edit it, then --recipe recipe.toml (docs/data.md)"
        raise InputError(f"{not_data(data)}; to read images, text or audio, pass a recipe: {how}")
    return RawSource(data, specs, r, limit, name, also, metadata, Path(model_path), skip_bad)


def data_recipe(*sources) -> dict | None:
    """The recipe the raw sources were read through, resolved, for the report (None for .npy/.npz data)."""
    recipes = [s.recipe for s in sources if isinstance(s, RawSource)]
    if not recipes:
        return None
    out = recipes[0].to_dict()
    tallies: dict[str, set] = {}
    for t in (t for r in recipes for t in r.tables):
        for key, seen in getattr(t, "tallies", {}).items():
            tallies.setdefault(key, set()).update(seen)
    skipped = [why for s in sources if isinstance(s, RawSource) for why in s.skipped]
    counts = {key: len(seen) for key, seen in sorted(tallies.items())}
    return out | counts | ({"skipped_files": skipped} if skipped else {})
