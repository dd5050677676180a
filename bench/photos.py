"""Real photos for the benchmark's made detectors: crops of scikit-image's bundled images (no download). The
calibration and evaluation crops are drawn from the same photos (the same domain, as a deployment's
calibration set is) at other positions and scales; `shifted` draws from photos of another kind (textures,
microscopy) for a distribution-shift check.

    crops = PhotoCrops("calib", rng)      # or "eval", "stats" (BatchNorm statistics: the calibration photos)
    x = crops.sample(320)                 # [1, 3, 320, 320] float32, RGB in 0..255
"""

from __future__ import annotations

import numpy as np
import skimage.data
from netbuild import write_splits
from skimage.color import gray2rgb, rgba2rgb
from skimage.transform import resize

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "camera", "coins", "clock", "moon", "horse", "page", "logo")
POOLS = {"calib": PHOTOS, "eval": PHOTOS, "stats": PHOTOS}
POOLS["shifted"] = ("hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass", "gravel")


def _rgb(name: str) -> np.ndarray:
    im = getattr(skimage.data, name)()
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    im = im.astype(np.float64)
    if im.max() <= 1.0:
        im = im * 255
    if im.ndim == 2:
        return gray2rgb(im)
    return rgba2rgb(im / 255) * 255 if im.shape[2] == 4 else im


class PhotoCrops:
    def __init__(self, pool: str, rng: np.random.Generator) -> None:
        self.images = [_rgb(n) for n in POOLS[pool]]
        self.rng = rng

    def sample(self, size: int) -> np.ndarray:
        """A random square crop (40-100% of the photo's short side), resized, as [1, 3, size, size] in 0..255."""
        im = self.images[int(self.rng.integers(len(self.images)))]
        h, w = im.shape[:2]
        side = int(min(h, w) * self.rng.uniform(0.4, 1.0))
        y, x = int(self.rng.integers(0, h - side + 1)), int(self.rng.integers(0, w - side + 1))
        crop = resize(im[y : y + side, x : x + side], (size, size), anti_aliasing=True, preserve_range=True)
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.clip(crop, 0, 255).transpose(2, 0, 1)[None].astype(np.float32)


def write_photo_inputs(
    folder, rng: np.random.Generator, size: int, prepare, n_calib: int = 24, n_eval: int = 24
) -> None:
    """calib/ and eval/ .npy files: prepare(crop) of crops from each pool."""

    def cropped(split: str):
        def start():
            crops = PhotoCrops(split, rng)
            return lambda: prepare(crops.sample(size))

        return start

    write_splits(folder, [("calib", n_calib, cropped("calib")), ("eval", n_eval, cropped("eval"))])
