"""Pictures drawn with Pillow for the recipe tests (no download): gradients and shapes, of several sizes and
file kinds, and the independent reference preprocessing the tests compare qcli's with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(w + h, 1)], -1)
    noise = rng.integers(0, 40, (h, w, 3))
    im = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = x0 + int(rng.integers(2, w // 2 + 2)), y0 + int(rng.integers(2, h // 2 + 2))
        d.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def write_pictures(folder: Path, n: int, seed: int = 0, sizes=((40, 30), (25, 50), (33, 33))) -> list[Path]:
    """n pictures as PNG (lossless: the reference decodes the same pixels), sizes cycling."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        path = folder / f"img{i:03d}.png"
        picture(rng, w, h).save(path)
        out.append(path)
    return out


def reference(path: Path, short: int, crop: int, mean, std, bgr: bool = False, nhwc: bool = False) -> np.ndarray:
    """torchvision-style Resize(short) + CenterCrop(crop) + Normalize, written out: round() for the long side,
    floor offsets for the crop, numpy slicing and float64 arithmetic."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    nw, nh = (short, int(round(h * short / w))) if w <= h else (int(round(w * short / h)), short)
    a = np.asarray(im.resize((nw, nh), Image.BILINEAR), np.float64)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    a = a[top : top + crop, left : left + crop]
    a = a[:, :, ::-1] if bgr else a
    a = (a - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return (a if nhwc else a.transpose(2, 0, 1))[None].astype(np.float32)
