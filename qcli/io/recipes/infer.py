"""Recipes from what the model ships with, for raw data and no --recipe: a tokenizer.json beside the model (as
Hugging Face exporters write it) for text files, a preprocessor_config.json (an image processor's settings) for
pictures. Every setting taken says where it came from. Never applied to .npy/.npz data."""

from __future__ import annotations

import json
from pathlib import Path

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.recipes import image, text
from qcli.io.recipes.recipe import Recipe, parse_recipe

TEXT_SUFFIXES = (".txt", ".jsonl")
# What an untrusted preprocessor_config.json raises on the way to recipe keys (JSONDecodeError is a ValueError)
MALFORMED = (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError)
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def token_input(specs: list[InputSpec]) -> InputSpec | None:
    named = [s for s in specs if s.name == "input_ids"]
    ints = [s for s in specs if s.dtype.kind in "iu" and len(s.shape) == 2]
    return (named or ints or [None])[0]


def image_input(specs: list[InputSpec]) -> InputSpec | None:
    return next((s for s in specs if s.dtype.kind in "fu" and len(s.shape) == 4), None)


def audio_input(specs: list[InputSpec]) -> InputSpec | None:
    return next((s for s in specs if s.dtype.kind == "f" and 1 <= len(s.shape) <= 3), None)


def state_inputs(specs: list[InputSpec], outputs: list[InputSpec]) -> dict[str, str]:
    """Inputs that look fed back from an output: the same dtype and rank, and a name that starts the output's
    (state -> stateN, h0 -> hn is not guessed) or contains "state" on both sides."""
    found = {}
    for s in specs:
        for o in outputs:
            alike = o.dtype == s.dtype and len(o.shape) == len(s.shape) and len(s.shape) >= 2 and o.name != s.name
            named = o.name.startswith(s.name) or ("state" in s.name.lower() and "state" in o.name.lower())
            if alike and named and s.name not in found and o.name not in found.values():
                found[s.name] = o.name
    return found


def infer_recipe(model_path: Path, specs: list[InputSpec], data: Path) -> Recipe | None:
    """The recipe the files beside the model give for this data, or None."""
    folder = Path(model_path).parent
    tokenizer, processor = folder / "tokenizer.json", folder / "preprocessor_config.json"
    is_text = data.suffix.lower() in TEXT_SUFFIXES or (data.is_dir() and _holds(data, TEXT_SUFFIXES))
    if is_text and tokenizer.is_file() and (spec := token_input(specs)) is not None:
        doc = {"inputs": {spec.name: {"kind": "text", "tokenizer": tokenizer.name}}}  # beside the model: `folder`
        origins = {"tokenizer": str(tokenizer), "max_length": "the model's sequence axis or tokenizer.json"}
        return _parsed(doc, specs, folder, f"{tokenizer.name} beside the model", origins)
    if not is_text and processor.is_file() and (spec := image_input(specs)) is not None:
        table = processor_table(processor)
        doc = {"inputs": {spec.name: {"kind": "image", **table}}}
        return _parsed(doc, specs, folder, f"{processor.name} beside the model", dict.fromkeys(table, processor.name))
    return None


def _parsed(doc: dict, specs: list[InputSpec], folder: Path, origin: str, origins: dict[str, str]) -> Recipe:
    r = parse_recipe(doc, specs, folder, origin)
    return Recipe(r.tables, origin, r.side_files, origins)


def _holds(folder: Path, suffixes: tuple[str, ...]) -> bool:
    return any(p.suffix.lower() in suffixes for p in folder.rglob("*") if p.is_file())


def processor_table(path: Path) -> dict:
    """The recipe keys of a preprocessor_config.json, an untrusted file: malformed, an error naming it (exit 2)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise TypeError(f"it holds a JSON {type(cfg).__name__}, not an object")
        return image_table(cfg)
    except MALFORMED as e:
        raise InputError(f"{path}: cannot read it as an image processor's preprocessor_config.json ({e})") from None


def image_table(cfg: dict) -> dict:
    """An image processor's settings (Hugging Face preprocessor_config.json) as recipe keys."""
    out: dict = {}
    size = cfg.get("size")
    if cfg.get("do_resize", True) and size is not None:
        if isinstance(size, int):
            out["resize"] = size
        elif isinstance(size, dict) and "shortest_edge" in size:
            out["resize"] = int(size["shortest_edge"])
        elif isinstance(size, dict) and {"height", "width"} <= set(size):
            out["resize"] = [int(size["height"]), int(size["width"])]
    crop = cfg.get("crop_size")
    if cfg.get("do_center_crop") and crop is not None:
        out["crop"] = [int(crop["height"]), int(crop["width"])] if isinstance(crop, dict) else int(crop)
    rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    if cfg.get("do_normalize", True) and "image_mean" in cfg and "image_std" in cfg:
        # (x * rescale - m) / s == (x - m / rescale) / (s / rescale): the recipe's 0-255 units
        out["mean"] = [float(m) / rescale for m in cfg["image_mean"]]
        out["std"] = [float(s) / rescale for s in cfg["image_std"]]
    elif rescale != 1.0:
        out["scale"] = rescale
    if isinstance(cfg.get("resample"), int) and cfg["resample"] in PIL_FILTERS:
        out["resample"] = PIL_FILTERS[cfg["resample"]]
    return out


def starting_recipe(model_path: Path, specs: list[InputSpec], outputs: list[InputSpec] = ()) -> str:
    """`qcli recipe MODEL`: a TOML recipe with what could be inferred, a commented line for what could not;
    the tables in the model's input order."""
    folder = Path(model_path).parent
    blocks: dict[str, list[str]] = {}
    for name, out in state_inputs(specs, outputs).items():
        blocks[name] = [f"[inputs.{name}]  # fed back from output {out!r} of the same shape", 'kind = "state"']
        blocks[name] += [f'from = "{out}"']
    rest = [s for s in specs if s.name not in blocks]
    tok, img, snd = token_input(rest), image_input(rest), audio_input(rest)
    if tok is not None:
        found = (folder / "tokenizer.json").is_file()
        where = "found beside the model" if found else "NOT found beside the model: set its path"
        block = [f"[inputs.{tok.name}]  # and the other token inputs", 'kind = "text"']
        # relative to the folder the recipe is saved in: here, where `qcli recipe MODEL > recipe.toml` runs
        block += [f"tokenizer = {json.dumps((folder / 'tokenizer.json').as_posix())}  # {where}"]
        blocks[tok.name] = block + [
            "# max_length = 128",
            '# padding = "none"   # or "max_length"',
            "# truncation = true",
        ]
        blocks |= {s.name: [] for s in rest if s.name in text.TOKEN_INPUTS and s.name != tok.name}
    elif img is not None:
        blocks[img.name] = _image_lines(img, folder)
    elif snd is not None:
        blocks[snd.name] = _audio_lines(snd)
    for s in specs:
        if s.name not in blocks:
            blocks[s.name] = [f"[inputs.{s.name}]  # {s.dtype} {list(s.shape)}: could not infer it"]
            blocks[s.name] += ['kind = "constant"', "value = 0  # set it"]
    lines = [f"# Data recipe for {Path(model_path).name} (qcli recipe). Check every line; see docs/data.md."]
    for s in specs:
        lines += ["", *blocks[s.name]] if blocks[s.name] else []
    return "\n".join(lines) + "\n"


def _audio_lines(spec: InputSpec) -> list[str]:
    last = spec.shape[-1] if isinstance(spec.shape[-1], int) and spec.shape[-1] > 0 else None
    out = [f"[inputs.{spec.name}]  # {spec.dtype} {list(spec.shape)}: audio samples?", 'kind = "audio"']
    out += ["sample_rate = 16000  # set the model's"]
    out += ["frame = 512  # samples per step: set the model's" if last is None else f"# frame = {last}"]
    return out + ["# hop = 160  # samples between frames (default: the frame)", "# context = 0  # carried over"]


def _image_lines(spec: InputSpec, folder: Path) -> list[str]:
    processor = folder / "preprocessor_config.json"
    layout = image._guess_layout(spec.shape)
    hw = spec.shape[2:4] if layout == "NCHW" else spec.shape[1:3]
    out = [f"[inputs.{spec.name}]  # {spec.dtype} {list(spec.shape)}", 'kind = "image"', f'layout = "{layout}"']
    if processor.is_file():
        table = processor_table(processor)
        return out + [f"{k} = {json.dumps(v)}  # {processor.name}" for k, v in table.items()]
    static = all(isinstance(d, int) and d > 0 for d in hw)
    out += [f"resize = {json.dumps(list(hw))}" if static else "resize = 640  # the shorter side; or [H, W]"]
    gray = (spec.shape[1] if layout == "NCHW" else spec.shape[3]) == 1
    zeros, full = ("0", "255") if gray else ("[0, 0, 0]", "[255, 255, 255]")
    out += ['color = "L"' if gray else 'color = "RGB"  # or "BGR"', "# crop = 224"]
    out += [f"mean = {zeros}    # 0-255 units: set the model's", f"std = {full}"]
    return out + ['# resample = "bilinear"', "# letterbox = [640, 640]  # detectors"]
