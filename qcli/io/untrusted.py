"""A model file is untrusted input: its external-data references are checked before anything reads them.

Every tensor stored outside the model file (subgraphs' too) must name a relative `location` without `..`, not
a symbolic link (onnx refuses those too), that resolves inside the model's folder, to a regular file holding
`offset + length` bytes, and `length` must be what the tensor's dims and type need; an inline tensor's raw
bytes must match its dims too.
Checked by qcli itself, so the rule and its message do not depend on the onnx or onnxruntime version (both
refuse most of these too, each in its own words).
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath, PureWindowsPath

from onnx import ModelProto, TensorProto, helper
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from qcli.core.errors import InputError

PACKED = {TensorProto.INT4: 0.5, TensorProto.UINT4: 0.5}  # bytes per value of packed types


def expected_bytes(t: TensorProto) -> int | None:
    """The bytes a tensor's dims and type need (None for strings and unknown types)."""
    if t.data_type in PACKED:
        return math.ceil(math.prod(t.dims) * PACKED[t.data_type])
    try:
        size = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return None if t.data_type == TensorProto.STRING else math.prod(t.dims) * size


def check_external_data(model: ModelProto, folder: Path) -> None:
    """Raise InputError naming the tensor for any external-data reference that leaves `folder` or does not fit."""
    root = Path(folder).resolve()
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            raw = expected_bytes(t) if t.HasField("raw_data") else None
            if raw is not None and len(t.raw_data) != raw:
                raise InputError(f"tensor {t.name!r} holds {len(t.raw_data)} bytes; its dims {list(t.dims)} need {raw}")
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"tensor {t.name!r}: external data location {loc!r}"
        if not loc or any(
            p.is_absolute() or ".." in p.parts or p.drive for p in (PurePosixPath(loc), PureWindowsPath(loc))
        ):
            raise InputError(f"{where} is not a plain relative path inside the model's folder; refused")
        if (Path(folder) / loc).is_symlink():
            raise InputError(f"{where} is a symbolic link; refused (copy the file in its place)")
        path = (Path(folder) / loc).resolve()
        if not path.is_relative_to(root):  # a linked folder on the way
            raise InputError(f"{where} resolves outside the model's folder (to {path}); refused")
        if not path.is_file():
            raise InputError(f"{where}: no such file beside the model")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", path.stat().st_size))
        except ValueError:
            raise InputError(f"{where}: offset and length must be whole numbers") from None
        need = expected_bytes(t)
        if offset < 0 or length < 0 or offset + length > path.stat().st_size:
            raise InputError(
                f"{where}: bytes {offset} to {offset + length} declared, the file holds {path.stat().st_size}"
            )
        if need is not None and "length" in info and length != need:
            raise InputError(f"{where}: {length} bytes declared, its dims {list(t.dims)} need {need}")
