"""kind = "image": a picture file (JPEG, PNG, BMP, WebP; grayscale, palette and alpha converted) -> one input.

Order, as the common reference code does it: decode, convert to `color`, resize (`resize` = the shorter side,
the other scaled with round(); or [H, W] exactly; or `letterbox` = [H, W]: the whole image scaled to fit, padded
with `pad` around it, centred at floor offsets), `multiple_of` (each side rounded to a multiple), centre `crop`
(floor offsets), then (x - mean) / std (or (x - mean) * scale) in the decoded image's 0-255 units, `layout`,
`dtype`. Alpha is dropped (as Image.convert("RGB") does).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.recipes.keys import Table
from qcli.io.recipes.recipe import KINDS, FillsOne

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# PIL's wide grayscale modes and their full scale: 16-bit PNGs decode as I;16 (or I, holding 0-65535)
WIDE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}
KEYS = {"resize", "letterbox", "multiple_of", "crop", "mean", "std", "scale", "layout", "color", "dtype"}
KEYS |= {"resample", "pad"}
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class ImageInput(FillsOne):
    name: str
    color: str  # RGB, BGR or L
    layout: str  # NCHW or NHWC
    dtype: str
    resize: int | tuple[int, int] | None
    letterbox: tuple[int, int] | None
    multiple_of: int | None
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...] | None
    scale: float | None
    resample: str
    pad: int
    kind: str = "image"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return SUFFIXES

    def count(self, path: Path) -> int:
        return 1

    def read(self, path: Path | None, index: int) -> dict[str, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                pixels = preprocess(im, self)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InputError(f"{path}: cannot read it as an image ({type(e).__name__}: {e})") from e
        return {self.name: pixels}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "name"}


def preprocess(im, cfg: ImageInput) -> np.ndarray:
    """One decoded PIL image -> [1, C, H, W] (or [1, H, W, C]) in the recipe's dtype."""
    from PIL import Image

    if im.mode in WIDE:  # 16- and 32-bit grayscale: scaled to 0-255 (convert() would clip at 255)
        im = Image.fromarray(
            (np.asarray(im, np.float64) * (255.0 / WIDE[im.mode])).round().clip(0, 255).astype(np.uint8)
        )
    im = im.convert("L" if cfg.color == "L" else "RGB")
    method = getattr(Image.Resampling, cfg.resample.upper())
    w, h = im.size
    if isinstance(cfg.resize, int):
        s = cfg.resize
        size = (s, max(1, round(h * s / w))) if w <= h else (max(1, round(w * s / h)), s)
        im = im.resize(size, method)
    elif cfg.resize is not None:
        im = im.resize((cfg.resize[1], cfg.resize[0]), method)
    if cfg.letterbox is not None:
        im = _letterbox(im, cfg.letterbox, cfg.pad, method)
    if cfg.multiple_of:
        m, (w, h) = cfg.multiple_of, im.size
        im = im.resize((max(m, round(w / m) * m), max(m, round(h / m) * m)), method)
    if cfg.crop is not None:
        (ch, cw), (w, h) = cfg.crop, im.size
        if ch > h or cw > w:
            raise ValueError(f"the image is {h}x{w} after resizing, smaller than crop = [{ch}, {cw}]")
        top, left = (h - ch) // 2, (w - cw) // 2
        im = im.crop((left, top, left + cw, top + ch))
    x = np.asarray(im, np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    if cfg.color == "BGR":
        x = x[:, :, ::-1]
    x = x - np.asarray(cfg.mean, np.float32)
    if cfg.std is not None:
        x = x / np.asarray(cfg.std, np.float32)
    elif cfg.scale is not None:
        x = x * np.float32(cfg.scale)
    if cfg.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    dtype = np.dtype(cfg.dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    return np.ascontiguousarray(x[None]).astype(dtype)


def _letterbox(im, box: tuple[int, int], pad: int, method):
    from PIL import Image

    (bh, bw), (w, h) = box, im.size
    r = min(bh / h, bw / w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    canvas = Image.new(im.mode, (bw, bh), pad if im.mode == "L" else (pad,) * 3)
    canvas.paste(im.resize((nw, nh), method), ((bw - nw) // 2, (bh - nh) // 2))
    return canvas


@KINDS.register("image")
def parse(name: str, values: dict, specs: dict[str, InputSpec], base: Path) -> ImageInput:
    spec, t = specs[name], Table(f"[inputs.{name}]", values, KEYS)
    if len(spec.shape) != 4:
        raise InputError(f'recipe [inputs.{name}]: kind = "image" fills a 4-D input; {name!r} has shape {spec.shape}')
    layout = t.str("layout", _guess_layout(spec.shape), ("NCHW", "NHWC"))
    c_dim = spec.shape[1] if layout == "NCHW" else spec.shape[3]
    color = t.str("color", "L" if c_dim == 1 else "RGB", ("RGB", "BGR", "L"))
    channels = 1 if color == "L" else 3
    if isinstance(c_dim, int) and c_dim > 0 and c_dim != channels:
        raise t.error("color", f"gives {channels} channel(s); input {name!r} has {c_dim} ({layout} {list(spec.shape)})")
    if t.has("std") and t.has("scale"):
        raise t.error("scale", "is an alternative to std: give one of them")
    crop = t.size("crop")
    cfg = ImageInput(
        name=name,
        color=color,
        layout=layout,
        dtype=t.str("dtype", spec.dtype.name),
        resize=t.size("resize"),
        letterbox=_pair(t.size("letterbox")),
        multiple_of=t.int("multiple_of"),
        crop=_pair(crop),
        mean=t.numbers("mean", channels, (0.0,) * channels),
        std=t.numbers("std", channels),
        scale=(t.numbers("scale", 1) or (None,))[0],
        resample=t.str("resample", "bilinear", RESAMPLE),
        pad=t.int("pad", 114, minimum=0),
    )
    if cfg.std is not None and not all(math.isfinite(v) and v != 0 for v in cfg.std):
        raise t.error("std", f"divides the pixels: every value must be a non-zero number (got {list(cfg.std)})")
    if cfg.scale is not None and not (math.isfinite(cfg.scale) and cfg.scale != 0):
        raise t.error("scale", f"multiplies the pixels: a non-zero number (got {cfg.scale:g})")
    _check_dtype(t, cfg, spec)
    _check_size(t, cfg, spec)
    return cfg


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _guess_layout(shape) -> str:
    return "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"


def _check_dtype(t: Table, cfg: ImageInput, spec: InputSpec) -> None:
    try:
        dtype = np.dtype(cfg.dtype)
    except TypeError:
        raise t.error("dtype", 'is not a numpy dtype name (e.g. "float32", "uint8")') from None
    if dtype != spec.dtype:
        raise t.error("dtype", f"input {spec.name!r} takes {spec.dtype}")


def _check_size(t: Table, cfg: ImageInput, spec: InputSpec) -> None:
    """The recipe's output height and width against the input's static ones."""
    dims = spec.shape[2:4] if cfg.layout == "NCHW" else spec.shape[1:3]
    static = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if static == [None, None]:
        return
    if cfg.crop is not None:
        out, key = cfg.crop, "crop"
    elif cfg.letterbox is not None and not cfg.multiple_of:
        out, key = cfg.letterbox, "letterbox"
    elif isinstance(cfg.resize, tuple) and not cfg.multiple_of:
        out, key = cfg.resize, "resize"
    else:
        raise InputError(
            f"recipe {t.where}: input {spec.name!r} has a fixed size {list(spec.shape)}, and this recipe makes "
            f"images of varying size: add crop = {static[0]} or resize = [{static[0]}, {static[1]}]"
        )
    for got, want in zip(out, static):
        if want is not None and got != want:
            raise t.error(key, f"gives {out[0]}x{out[1]} images; input {spec.name!r} takes {list(spec.shape)}")
