"""Write calibration and evaluation inputs for the cached benchmark models.

    python bench/make_inputs.py

PP-OCR (det, rec, cls): synthetic "text" images made of scikit-learn's bundled handwritten
digits (sklearn.datasets.load_digits), upscaled and laid out as dark glyphs on light, slightly
noisy backgrounds, then normalised as PaddleOCR does: (img/255 - 0.5)/0.5, NCHW, float32.
One .npy file per sample, batch 1:
  det  [1, 3, 320, 320]  several text lines at random positions
  rec  [1, 3, 48, 320]   one text line, resized to height 48, right-padded with 0 (PaddleOCR)
  cls  [1, 3, 48, 192]   like rec, half of the crops rotated by 180 degrees
MiniLM: .npz files with input_ids / attention_mask [4, S] from wordpiece.SENTENCES.
Calibration and evaluation samples never share an image or a sentence. Fixed seed.
"""

from __future__ import annotations

import numpy as np
from common import CACHE
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from wordpiece import SENTENCES, WordPiece

SEED = 1234
N_CALIB = 24
N_EVAL = 24
MINILM_BATCH = 4


class GlyphPainter:
    """Paints digit glyphs (from a calib- or eval-only pool) as text lines onto images."""

    def __init__(self, glyphs: np.ndarray, rng: np.random.Generator):
        self.glyphs = glyphs  # [N, 8, 8] ink coverage in 0..1
        self.rng = rng

    def background(self, h: int, w: int) -> np.ndarray:
        base = self.rng.uniform(190, 250, size=3)
        ramp = np.linspace(-1, 1, w)[None, :, None] * self.rng.uniform(-12, 12, size=3)
        noise = self.rng.normal(0, 4, size=(h, w, 3))
        return np.clip(base + ramp + noise, 0, 255)

    def line(self, img: np.ndarray, x: int, y: int, height: int, n_chars: int) -> int:
        """Draw n_chars glyphs left to right from (x, y); returns the x after the last glyph."""
        ink = self.rng.uniform(0, 70, size=3)
        for _ in range(n_chars):
            if self.rng.random() < 0.12:  # a word gap
                x += height // 2
                continue
            glyph = self.glyphs[self.rng.integers(len(self.glyphs))]
            alpha = np.clip(zoom(glyph, height / 8.0, order=1), 0, 1)
            gh, gw = alpha.shape
            if x + gw > img.shape[1] or y + gh > img.shape[0]:
                break
            patch = img[y : y + gh, x : x + gw]
            patch[:] = patch * (1 - alpha[..., None]) + ink * alpha[..., None]
            x += gw + int(self.rng.integers(-height // 8, height // 6 + 1))
        return x


def normalise(img: np.ndarray) -> np.ndarray:
    """HWC 0..255 -> [1, 3, H, W] float32 as PaddleOCR feeds its models."""
    chw = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return chw[None].astype(np.float32)


def det_sample(p: GlyphPainter, size: int = 320) -> np.ndarray:
    img = p.background(size, size)
    n_lines = int(p.rng.integers(3, 7))
    band = size // n_lines  # one line per horizontal band, so lines never overlap
    for i in range(n_lines):
        height = int(p.rng.integers(14, min(34, band)))
        x = int(p.rng.integers(0, size // 2))
        y = i * band + int(p.rng.integers(0, band - height + 1))
        p.line(img, x, y, height, int(p.rng.integers(3, 16)))
    return normalise(img)


def text_crop(p: GlyphPainter, height: int = 48, max_w: int = 320) -> np.ndarray:
    """A tight crop of one text line at height 48, at most max_w wide."""
    glyph_h = int(p.rng.integers(26, 40))
    canvas = p.background(height, max_w)
    top = (height - glyph_h) // 2 + int(p.rng.integers(-3, 4))
    end = p.line(canvas, int(p.rng.integers(2, 8)), top, glyph_h, int(p.rng.integers(3, 14)))
    return canvas[:, : min(max_w, end + int(p.rng.integers(2, 10)))]


def padded(crop: np.ndarray, width: int) -> np.ndarray:
    """PaddleOCR rec/cls layout: normalised crop on the left, zeros to the right."""
    out = np.zeros((1, 3, crop.shape[0], width), dtype=np.float32)
    out[..., : crop.shape[1]] = normalise(crop)
    return out


def rec_sample(p: GlyphPainter) -> np.ndarray:
    return padded(text_crop(p, max_w=320), 320)


def cls_sample(p: GlyphPainter) -> np.ndarray:
    crop = text_crop(p, max_w=192)
    if p.rng.random() < 0.5:
        crop = crop[::-1, ::-1]  # upside-down text line
    return padded(crop, 192)


def write_ocr_inputs(name: str, make, rng: np.random.Generator, glyph_pools) -> None:
    for split, count, glyphs in (("calib", N_CALIB, glyph_pools[0]), ("eval", N_EVAL, glyph_pools[1])):
        folder = CACHE / name / split
        folder.mkdir(parents=True, exist_ok=True)
        painter = GlyphPainter(glyphs, rng)
        for i in range(count):
            np.save(folder / f"{i:03d}.npy", make(painter))
    print(f"{name}: {N_CALIB} calib + {N_EVAL} eval samples in {CACHE / name}")


def write_minilm_inputs() -> None:
    tok = WordPiece(CACHE / "minilm" / "hf" / "vocab.txt")
    half = len(SENTENCES) // 2
    for split, texts in (("calib", SENTENCES[:half]), ("eval", SENTENCES[half:])):
        folder = CACHE / "minilm" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(texts), MINILM_BATCH):
            np.savez(folder / f"{i // MINILM_BATCH:03d}.npz", **tok.batch(texts[i : i + MINILM_BATCH]))
    print(f"minilm: {half} calib + {len(SENTENCES) - half} eval sentences in batches of {MINILM_BATCH}")


def main() -> None:
    rng = np.random.default_rng(SEED)
    digits = load_digits().images / 16.0
    order = rng.permutation(len(digits))
    pools = (digits[order[: len(order) // 2]], digits[order[len(order) // 2 :]])
    for name, make in (("det", det_sample), ("rec", rec_sample), ("cls", cls_sample)):
        write_ocr_inputs(name, make, rng, pools)
    write_minilm_inputs()


if __name__ == "__main__":
    main()
