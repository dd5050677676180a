"""The cnn sample's data as the files people have: grayscale PNGs, and a recipe that turns them back into the
model's input. Made from the committed .npy batches (numpy and Pillow only, no training):

    python sample_models/make_images.py

    cnn/images/calib/000.png ...       the 128 calibration digits
    cnn/images/eval/<digit>/000.png    the 256 evaluation digits, filed under their label (integer folder names)
    cnn/recipe.toml                    kind = "image": the model's (x / 255 - MEAN) / STD in 0-255 units

A pixel is round((x * STD + MEAN) * 255): the 8-bit rounding is the only difference from the .npy data.
"""

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent / "cnn"
MEAN, STD = 0.305561, 0.323209  # the train-set statistics (sample_models/README.md)


def write(batches: list[Path], folder: Path, labels: np.ndarray | None) -> None:
    x = np.concatenate([np.load(b) for b in batches])[:, 0]
    pixels = np.clip(np.rint((x * STD + MEAN) * 255), 0, 255).astype(np.uint8)
    for i, p in enumerate(pixels):
        sub = folder / str(int(labels[i])) if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p, "L").save(sub / f"{i:03d}.png", optimize=True)


def main() -> None:
    write(sorted((HERE / "calib").glob("batch_*.npy")), HERE / "images" / "calib", None)
    write(sorted((HERE / "eval").glob("batch_*.npy")), HERE / "images" / "eval", np.load(HERE / "eval" / "labels.npy"))
    mean, std = MEAN * 255, STD * 255
    (HERE / "recipe.toml").write_text(
        "# The cnn sample's preprocessing: 32x32 grayscale, (x / 255 - MEAN) / STD, in 0-255 units.\n"
        f'[inputs.input]\nkind = "image"\ncolor = "L"\nresize = [32, 32]\nmean = {mean:.4f}\nstd = {std:.4f}\n'
    )


if __name__ == "__main__":
    main()
