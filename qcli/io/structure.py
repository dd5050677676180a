"""A model file's structure without its weights: graph, inputs, outputs and tensor headers, read from disk
without reading the data of the main graph's initializers.

onnx.load(path, load_external_data=False) reads a whole inline model (every weight) into memory, and once
more as the file's bytes. Here the file is memory-mapped and walked in protobuf's wire format: the data fields
of the main graph's initializers are skipped (never read), everything else is kept, and the result is parsed
as a ModelProto whose large initializers have a header (name, type, shape, external-data entries) and no data.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from onnx import ModelProto

_DROP = None
# TensorProto data fields: float_data 4, int32_data 5, string_data 6, int64_data 7, raw_data 9, double_data 10,
# uint64_data 11. The header (dims 1, data_type 2, segment 3, name 8, doc_string 12, external_data 13,
# data_location 14, metadata_props 16) is kept.
_TENSOR = {4: _DROP, 5: _DROP, 6: _DROP, 7: _DROP, 9: _DROP, 10: _DROP, 11: _DROP}
_GRAPH = {5: _TENSOR, 15: {1: _TENSOR}}  # initializer; sparse_initializer.values
_MODEL = {7: _GRAPH}  # graph


class WireError(ValueError):
    pass


def varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or malformed varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _filter(buf, start: int, end: int, rules: dict) -> bytearray:
    """The fields of the message in buf[start:end], less those `rules` drops; sub-rules apply to submessages."""
    out = bytearray()
    pos = start
    while pos < end:
        field_start = pos
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = varint(buf, pos)
            payload = pos
            pos += length
        else:  # groups (3, 4) are not used by onnx.proto
            raise WireError(f"unsupported wire type {wire}")
        if pos > end:
            raise WireError("field runs past the end of its message")
        if number not in rules:
            out += buf[field_start:pos]
        elif rules[number] is not _DROP and wire == 2:
            inner = _filter(buf, payload, pos, rules[number])
            out += _encode_varint(key) + _encode_varint(len(inner)) + inner
        elif rules[number] is not _DROP:
            out += buf[field_start:pos]
    return out


def read_structure(path: str | Path) -> ModelProto:
    """The model in `path` without the data of its main-graph initializers (raises on a malformed file)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise WireError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            data = _filter(buf, 0, len(buf), _MODEL)
    model = ModelProto()
    model.ParseFromString(bytes(data))
    return model
