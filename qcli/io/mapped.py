"""A model file with inline weights, copied for onnxruntime with its weights in an external-data file.

onnxruntime reads an inline model whole: the file's bytes, the parsed model and the weights it builds from them
are in memory at once while the session loads (2-3x the file, measured). From an external-data file whose large
tensors are aligned it maps the weights instead, and only what it keeps (its prepacked copies) counts.
The copy is streamed: the file is memory-mapped and walked in protobuf's wire format, each initializer's
raw bytes are written out one tensor at a time, and the graph comes from read_structure (no weights read).
"""

from __future__ import annotations

import mmap
from pathlib import Path

import onnx
from onnx import TensorProto

from qcli.io.detach import DETACH_BYTES, aligned, set_external
from qcli.io.structure import read_structure, varint

MIN_BYTES = 32 << 20  # inline weights from which a session loads from a copy
COPY_BYTES = 16 << 20
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data


def _fields(buf, start: int, end: int):
    """(field number, wire type, payload start, payload end) of each field of the message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, after = varint(buf, pos)
        elif wire == 1:
            after = pos + 8
        elif wire == 5:
            after = pos + 4
        elif wire == 2:
            length, pos = varint(buf, pos)
            after = pos + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, pos, after
        pos = after


def _initializers(buf) -> list[tuple[int, int, tuple[int, int] | None]]:
    """Each main-graph initializer in file order: its message's span and its raw_data's span (or None)."""
    out = []
    for number, wire, start, end in _fields(buf, 0, len(buf)):
        if number != _GRAPH or wire != 2:
            continue
        for n, w, s, e in _fields(buf, start, end):
            if n == _INITIALIZER and w == 2:
                raws = [(a, b) for k, kw, a, b in _fields(buf, s, e) if k == _RAW_DATA and kw == 2]
                out.append((s, e, raws[-1] if raws else None))
    return out


def inline_bytes(path: Path) -> int:
    """Bytes of raw tensor data stored inside the model file itself (0 when it has external data)."""
    g = read_structure(path).graph
    if g.sparse_initializer or any(t.data_location == TensorProto.EXTERNAL for t in g.initializer):
        return 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return sum(raw[1] - raw[0] for _, _, raw in _initializers(buf) if raw)


def external_copy(path: Path, folder: Path) -> Path:
    """`path` (a model with inline weights only) as folder/<name> with its initializers of DETACH_BYTES or more
    in <name>.data, large ones aligned for mapping: the same model, weights read one tensor at a time."""
    path, folder = Path(path), Path(folder)
    model = read_structure(path)
    data_name = path.name + ".data"
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            spans = _initializers(buf)  # reads the fields' headers only: mapped pages count as resident memory
        if len(spans) != len(model.graph.initializer):
            raise ValueError(f"{path.name}: {len(spans)} initializers in the file, {len(model.graph.initializer)} read")
        offset = 0
        with open(folder / data_name, "wb") as out:
            for t, (start, end, raw) in zip(model.graph.initializer, spans):
                size = raw[1] - raw[0] if raw else 0
                if size < DETACH_BYTES:  # small, or data in typed fields: the tensor as stored
                    f.seek(start)
                    t.CopyFrom(TensorProto.FromString(f.read(end - start)))
                    continue
                offset = aligned(offset, size)
                out.seek(offset)
                f.seek(raw[0])
                for done in range(0, size, COPY_BYTES):  # read, not mapped: a block in memory at a time
                    out.write(f.read(min(COPY_BYTES, size - done)))
                set_external(t, data_name, offset, size)
                offset += size
    onnx.save(model, str(folder / path.name))  # headers only: onnx writes no data for tensors without raw_data
    return folder / path.name
