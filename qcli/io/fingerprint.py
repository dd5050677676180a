"""A model's fingerprint: the sha256 of what it computes (opsets, inputs, outputs, nodes with their subgraphs,
initializers with their bytes), not of its file: the producer, doc strings and metadata do not count, and a model
saved with its weights inline or as external data has the same fingerprint. A saved plan is tied to it.

Tensors are hashed one at a time, so a model over 2 GB is never serialized whole."""

from __future__ import annotations

import hashlib

from onnx import ModelProto, TensorProto


def fingerprint(model: ModelProto) -> str:
    h = hashlib.sha256()
    for op in sorted((o.domain, o.version) for o in model.opset_import):
        _put(h, f"opset {op[0]} {op[1]}".encode())
    g = model.graph
    for v in [*g.input, *g.output]:
        _put(h, v.SerializeToString(deterministic=True))
    for node in g.node:
        _put(h, node.SerializeToString(deterministic=True))
    for t in g.initializer:
        _tensor(h, t)
    for s in g.sparse_initializer:
        _put(h, s.SerializeToString(deterministic=True))
    return h.hexdigest()


def _tensor(h, t: TensorProto) -> None:
    """Name, type, dims and the values' bytes; external-data fields (where the bytes were read from) left out."""
    _put(h, f"{t.name} {t.data_type} {list(t.dims)}".encode())
    if t.HasField("raw_data"):
        _put(h, t.raw_data)
        return
    bare = TensorProto()
    bare.CopyFrom(t)
    del bare.external_data[:]
    bare.ClearField("data_location")
    bare.ClearField("doc_string")
    _put(h, bare.SerializeToString(deterministic=True))


def _put(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
