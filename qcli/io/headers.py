"""A batch's shape and dtype from its files' headers alone, for checking every data file before any work:
zero-strided stand-ins (one element of memory each) in place of the arrays."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qcli.core.errors import InputError

if TYPE_CHECKING:
    from qcli.io.feeds import InputSpec


def stand_in(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape), writeable=False)


def _header(f, size: int, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """The array's shape and dtype; the bytes it declares must be in the file (`size` bytes in all)."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if not dtype.hasobject and f.tell() + declared > size:
        raise InputError(
            f"{where}: its header declares {declared} bytes of data ({dtype} {list(shape)}); "
            f"the file holds {size - f.tell()}"
        )
    return tuple(shape), dtype


def header_feed(item: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """What FeedSource would load from `item` (a .npy, a .npz or a folder of .npy), as stand-ins."""
    try:
        if item.is_dir():
            return {p.stem: _npy(p) for p in sorted(item.glob("*.npy"))}
        if item.suffix == ".npz":
            out = {}
            with zipfile.ZipFile(item) as z:
                for info in z.infolist():
                    with z.open(info) as f:
                        out[info.filename.removesuffix(".npy")] = stand_in(
                            *_header(f, info.file_size, f"{item}:{info.filename}")
                        )
            return out
        return {specs[0].name: _npy(item)}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {item} as numpy data ({type(e).__name__}: {e})") from e


def _npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return stand_in(*_header(f, path.stat().st_size, str(path)))
