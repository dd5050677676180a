"""Weight-free views of an in-memory model, so nothing ever asks protobuf for a whole model above 2 GB.

A *skeleton* is a copy of the model whose large main-graph initializers are headers only (name, type, shape)
marked as external data: everything but the weights, a few KB to a few MB. Shape inference, onnx.checker and
the version converter run on it; a session or an output file gets the weights written tensor by tensor into
one data file (one tensor's bytes in memory at a time), never through one serialization of the whole model.

Reading `TensorProto.raw_data` copies the bytes (upb), and `ByteSize()` serializes: sizes here come from
each tensor's header, and raw bytes are read one tensor at a time.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper

DETACH_BYTES = 1024  # initializers from this size on are detached (onnx's own default external-data threshold)
ALIGN_FROM, ALIGN = 1 << 20, 1 << 16  # tensors of 1 MB or more start on a 64 KB boundary (mmap-able)
_SUB_BYTE_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(TensorProto, name)
}


def tensor_nbytes(t: TensorProto) -> int | None:
    """Bytes of a tensor's data from its header (dims and type), or None for a type without a fixed size."""
    n = math.prod(t.dims)
    if t.data_type in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[t.data_type] + 7) // 8
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _detachable(t: TensorProto) -> bool:
    size = tensor_nbytes(t)
    return size is not None and size >= DETACH_BYTES and t.HasField("raw_data")


def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5.28; `label` before
    return flag if flag is not None else fd.label == fd.LABEL_REPEATED


def copy_fields(dst, src, skip: str) -> None:
    """Every field of message `src` but `skip` into `dst` (src must hold no large raw_data outside `skip`)."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if _repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def replace_fields(dst, src, skip: str) -> None:
    """`dst`'s fields but `skip` replaced by `src`'s."""
    for fd, _ in dst.ListFields():
        if fd.name != skip:
            dst.ClearField(fd.name)
    copy_fields(dst, src, skip)


def _header(t: TensorProto) -> TensorProto:
    """The tensor without its data: fields listed one by one, since ListFields would copy raw_data."""
    h = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string)
    if t.HasField("segment"):
        h.segment.CopyFrom(t.segment)
    h.metadata_props.extend(t.metadata_props)
    return h


def set_external(h: TensorProto, location: str, offset: int, length: int) -> None:
    h.data_location = TensorProto.EXTERNAL
    del h.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = h.external_data.add()
        entry.key, entry.value = key, value


class Skeleton:
    """`model` less the data of its large main-graph initializers. `.model` is the skeleton; `.nbytes` is the
    size of the whole model as protobuf would count it (to a few bytes a tensor), computed without
    serializing it. The original model is never modified."""

    def __init__(self, model: ModelProto, location: str = "weights.data") -> None:
        self.location = location
        skel = ModelProto()
        copy_fields(skel, model, "graph")
        copy_fields(skel.graph, model.graph, "initializer")
        self.pairs: list[tuple[TensorProto, TensorProto]] = []  # (original, header in the skeleton)
        offset = 0
        for t in model.graph.initializer:
            if _detachable(t):
                size = tensor_nbytes(t)
                offset = aligned(offset, size)
                h = skel.graph.initializer.add()
                h.CopyFrom(_header(t))
                set_external(h, location, offset, size)
                self.pairs.append((t, h))
                offset += size
            else:
                skel.graph.initializer.add().CopyFrom(t)
        self.model = skel
        # Each detached tensor inline: its raw bytes plus a tag and length (<= 6 bytes), less its external refs.
        inline = sum(tensor_nbytes(t) + 6 + _header(t).ByteSize() - h.ByteSize() for t, h in self.pairs)
        self.nbytes = skel.ByteSize() + inline

    def detached(self) -> set[str]:
        return {t.name for t, _ in self.pairs}

    def write(self, path: Path, location: str | None = None) -> Path:
        """The model with its detached tensors in `path.parent / location` (default: the skeleton's)."""
        path = Path(path)
        location = location or self.location
        if location != self.location:
            for _, h in self.pairs:
                next(e for e in h.external_data if e.key == "location").value = location
            self.location = location
        with open(path.parent / location, "wb") as f:
            for t, h in self.pairs:
                offset = int(next(e.value for e in h.external_data if e.key == "offset"))
                f.seek(offset)
                data = t.raw_data  # a copy of this one tensor's bytes
                if len(data) != tensor_nbytes(t):
                    raise onnx.checker.ValidationError(_size_problem(t, len(data)))
                f.write(data)
                del data
        onnx.save(self.model, str(path))  # headers only: onnx writes no data for tensors without raw_data
        return path

    def check(self, full: bool) -> None:
        """onnx.checker on the skeleton (by path, next to an empty stand-in for the data file), plus the
        check it then cannot make: each detached tensor's data has the size its type and shape declare."""
        for t, _ in self.pairs:
            size = len(t.raw_data)
            if size != tensor_nbytes(t):
                raise onnx.checker.ValidationError(_size_problem(t, size))
        with tempfile.TemporaryDirectory(prefix="qcli-check-") as tmp:
            (Path(tmp) / self.location).touch()
            (Path(tmp) / "skeleton.onnx").write_bytes(self.model.SerializeToString())
            onnx.checker.check_model(str(Path(tmp) / "skeleton.onnx"), full_check=full)


def aligned(offset: int, size: int) -> int:
    return -(-offset // ALIGN) * ALIGN if size >= ALIGN_FROM else offset


def _size_problem(t: TensorProto, size: int) -> str:
    return (
        f"TensorProto (tensor name: {t.name}) raw_data size ({size} bytes) does not match the declared shape "
        f"and type ({tensor_nbytes(t)} bytes required)."
    )


def as_inputs(model: ModelProto) -> tuple[ModelProto, set[str], set[str]]:
    """The skeleton with the detached initializers declared as graph inputs instead (for onnx's version
    converter, which copies every initializer through its own IR); their names, and those of the inputs
    added (an IR < 4 model declares its initializers as inputs already)."""
    sk = Skeleton(model)
    g = sk.model.graph
    names = sk.detached()
    keep = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(keep)
    have = {i.name for i in g.input}
    g.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t, _ in sk.pairs if t.name not in have
    )
    return sk.model, names, {n for n in names if n not in have}
