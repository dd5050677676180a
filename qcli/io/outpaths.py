"""Where a command writes, checked against what it reads before any work: an output never replaces an input
(a model, a report, a recipe, a data file), so a slip in a flag never costs the user a file.

    refuse_inputs(out, "--html", {"the reference model": ref, "the evaluation data": data})

A data folder may take new files and hold qcli's own outputs (a run's model and reports beside its data);
a file in it of a kind qcli reads as data (arrays, images, text, audio) is not written over.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from qcli.core.errors import InputError
from qcli.io.recipes import audio, image, infer

# What a data folder's readers take: arrays (feeds.py) and each recipe kind's raw files.
DATA_SUFFIXES = frozenset((".npy", ".npz", *image.SUFFIXES, *infer.TEXT_SUFFIXES, *audio.SUFFIXES))


def refuse_inputs(out: Path, flag: str, inputs: Mapping[str, Path | str | None]) -> None:
    """InputError where `out` (what `flag` names) is one of `inputs` (a description -> its path, None: not
    given) or an existing data file inside an input folder."""
    out = Path(out)
    for what, src in inputs.items():
        if src is None:
            continue
        src = Path(src)
        if same_path(out, src):
            raise InputError(f"{flag} {out} is {what}: choose another path (qcli never writes over what it reads)")
        data = out.suffix.lower() in DATA_SUFFIXES and out.is_file()
        if src.is_dir() and data and out.resolve().is_relative_to(src.resolve()):
            raise InputError(
                f"{flag} {out} is a file in {what} ({src}): choose a path outside it (qcli never writes over "
                "what it reads)"
            )


def same_path(a: Path, b: Path) -> bool:
    """The same file or folder: by path, or, where both exist, by identity (links, case-folding systems)."""
    a, b = Path(a), Path(b)
    if a.absolute() == b.absolute() or a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def report_paths(out: Path) -> tuple[Path, Path, Path]:
    """Where a model's reports go: OUT.report.json, OUT.report.md, OUT.report.html."""
    return tuple(Path(f"{out}.report.{ext}") for ext in ("json", "md", "html"))


def check_outputs(model: Path, out: Path, reads: Mapping[str, Path | str | None]) -> None:
    """quantize's outputs (the model, its reports) against what it reads: the input model and `reads` (the
    data, the recipe, a replayed plan). The saved plan's path: replay.check_save_path."""
    if same_path(out, model):
        raise InputError(f"output {out} is the input model; choose another -o path (the input is never overwritten)")
    if out.suffix != ".onnx":
        raise InputError(f"output {out} should end in .onnx")
    reads = {"the input model": model, **reads}
    for path in (out, *report_paths(out)):
        what = "-o" if path == out else "the report"
        if path.is_dir():
            raise InputError(f"{what} {path} is a folder: choose another -o path (the model and its reports are files)")
        refuse_inputs(path, what, reads)
