"""What a model's bytes are: its initializers by kind (int8 weights, n-bit blocks, int32 biases, float weights,
other tensors), from the tensor headers alone (no weight is read), and the rest (graph, names, metadata)."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from qcli.io import model_io
from qcli.io.untrusted import expected_bytes
from qcli.measure.evaluate import file_size

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
BLOCK_OPS = {"MatMulNBits": 1, "GatherBlockQuantized": 0}  # the input holding packed weights, `bits` per value


def breakdown(path: Path) -> dict[str, int]:
    """Bytes by kind, in a fixed order, the kinds a model has; they sum to the file size (with external data)."""
    model = model_io.load(path, weights=False)
    blocks = {
        n.input[BLOCK_OPS[n.op_type]]: next((a.i for a in n.attribute if a.name == "bits"), 4)
        for n in model.graph.node
        if n.op_type in BLOCK_OPS
    }
    kinds = dict.fromkeys(
        ("int8 weights", "4-bit blocks", "8-bit blocks", "int32 biases", "float weights", "other tensors"), 0
    )
    # Weights held in Constant nodes (as Paddle and some exporters write them) weigh the same as initializers.
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for t in [*model.graph.initializer, *constants]:
        if t.name in blocks:
            kind = f"{blocks[t.name]}-bit blocks" if blocks[t.name] in (4, 8) else "other tensors"
        elif t.data_type in (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4):
            kind = "int8 weights" if t.data_type in (TensorProto.INT8, TensorProto.UINT8) else "4-bit blocks"
        elif t.data_type == TensorProto.INT32:
            kind = "int32 biases"
        elif t.data_type in FLOATS:
            kind = "float weights"
        else:
            kind = "other tensors"
        kinds[kind] += expected_bytes(t) or 0
    out = {k: v for k, v in kinds.items() if v}
    return out | {"graph and metadata": max(0, file_size(path) - sum(out.values()))}
