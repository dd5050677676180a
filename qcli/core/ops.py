"""What onnxruntime's CPU provider runs on integers, and the per-op facts the planner needs.

Taken from onnxruntime's QDQ selector registry (qdq_selector_action_transformer.cc): these DQ -> op -> Q
patterns are replaced by integer kernels at session start; anything else with Q/DQ around it runs in float
with extra conversions.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from qcli.core.graph import FLOAT, GraphIndex, attr

# Compute ops with a constant weight (or two activations for MatMul): the anchors of int8 regions.
ANCHORS = {"Conv", "MatMul", "Gemm"}
# Integer kernels that need every data input and the output quantized (QLinearAdd, QLinearConcat, ...).
QLINEAR = {"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"}
# Data movement: the runtime drops DQ -> op -> Q when both sides share scale and zero point (Split: every
# output's Q; MaxPool / ReduceMax / ReduceMin: a positive scale keeps the order). DepthToSpace's rule and
# uint8 kernel came in onnxruntime 1.21: older versions run it float between its Q/DQ, as they would anyway.
PASSTHROUGH = {
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "MaxPool",
    "Slice",
    "Split",
    "Gather",
    "GatherElements",
    "Expand",
    "Tile",
    "Resize",
    "DepthToSpace",
    "ReduceMax",
    "ReduceMin",
    "Pad",
}
# Ops that only move or select values (no arithmetic): they add no error of their own, so per-layer blame
# measures their tensors (a compute layer's input may be one) but never names them.
DATA_MOVEMENT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Slice", "Split"}
DATA_MOVEMENT |= {"Gather", "GatherElements", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth"}
DATA_MOVEMENT |= {"MaxPool", "ReduceMax", "ReduceMin"}

# Ops with integer kernels whose worth depends on the CPU and the shapes: the static plan keeps them float,
# measured placement tries them on int8 (placement.py) and keeps them where the model gets faster. QLinearSoftmax
# measured 4x slower than float Softmax on an attention model and 3x faster in a YOLOv8 box head; uint8
# Transpose 6% slower end to end on an attention model, needed in that head to keep its Softmax int8.
TRIAL_QLINEAR = {"Softmax"}
TRIAL_PASSTHROUGH = {"Transpose"}
TRIAL = TRIAL_QLINEAR | TRIAL_PASSTHROUGH
# Passthrough ops with several outputs, each sharing the input's scale and zero point.
MULTI_OUTPUT = {"Split"}
# Passthrough ops qcli writes on the integers itself: onnxruntime has int8/uint8 CPU kernels for them but no
# rule that drops the Q/DQ around them. Pad (int8 types from opset 11) pads with its value quantized.
# (SpaceToDepth is left out: its int8 kernels are newer than the onnxruntime qcli supports.)
NATIVE_INT8 = {"Pad"}
# Ops that read int8 and write no activation (indices): the runtime drops the DequantizeLinear in front.
INT_OUTPUT = {"ArgMax"}
# Ops that make their output smaller: worth running on int8 even when float follows.
SHRINKING = {"MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMax", "ReduceMin", "ArgMax"}
# Activations absorbed into the preceding QuantizeLinear (its saturation at the zero point clamps).
FOLDABLE = {"Relu", "Clip"}

# Compute ops onnxruntime's CPU provider has no integer kernel for: Q/DQ around them would only add time.
NO_INT_KERNEL = {"ConvTranspose"}


def weight_axis(node: NodeProto, w_shape: tuple[int, ...]) -> int | None:
    """Output-channel axis of the weight (per-channel quantization), None where per-tensor is required."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return 1 if len(w_shape) == 2 else None
    return None


def input_channels(node, idx: GraphIndex) -> int | None:
    """Channels (axis 1) of input 0 of a Conv / ConvTranspose / Gemm with a constant float weight, else None."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
        return None
    if not idx.is_float_const(node.input[1]) or attr(node, "transA", 0):
        return None
    w = idx.inits[node.input[1]].dims
    if node.op_type == "Conv":
        return w[1] * attr(node, "group", 1)
    if node.op_type == "ConvTranspose":
        return w[0]
    return w[1] if attr(node, "transB", 0) else w[0]


def is_depthwise(node: NodeProto, w_shape: tuple[int, ...]) -> bool:
    """A Conv with one input channel per group and as many groups as output channels."""
    return node.op_type == "Conv" and len(w_shape) >= 3 and w_shape[1] == 1 and attr(node, "group", 1) == w_shape[0] > 1


def anchor_problem(node: NodeProto, idx: GraphIndex, is_float) -> str | None:
    """Why this Conv/MatMul/Gemm cannot be an int8 anchor, or None if it can."""
    ins = list(node.input)
    if not is_float(ins[0]):
        return "input is not float32"
    if node.op_type == "MatMul":
        if not (idx.is_const(ins[1]) or is_float(ins[1])):
            return "second input is not float32"
        return None
    if not idx.is_const(ins[1]):
        return "weight is not a constant initializer"
    if idx.inits[ins[1]].data_type != FLOAT:
        return "weight is not float32"
    if len(ins) > 2 and ins[2] and not idx.is_const(ins[2]):
        return "bias is not constant"
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return "Gemm with transA=1 has no integer kernel pattern"
        c = ins[2] if len(ins) > 2 else ""
        if c and (attr(node, "beta", 1.0) != 1.0 or idx.const(c).ndim != 1):
            return "Gemm bias is not a per-output-channel vector with beta=1"
    return None


def macs_per_output(node: NodeProto, idx: GraphIndex, x_shape: tuple[int, ...]) -> float:
    """Multiply-accumulates per output element (Conv: Cin/group * kernel area; MatMul/Gemm: K)."""
    if node.op_type == "Conv":
        w = idx.inits[node.input[1]].dims
        return float(np.prod(w[1:]))
    if node.op_type == "Gemm":
        return float(x_shape[0] if attr(node, "transA", 0) else x_shape[-1]) if x_shape else 0.0
    return float(x_shape[-1]) if x_shape else 0.0


def data_inputs(node: NodeProto) -> list[int]:
    """Indices of the inputs that carry activations (as opposed to shapes, indices, axes)."""
    if node.op_type in PASSTHROUGH or node.op_type in TRIAL_PASSTHROUGH or node.op_type in INT_OUTPUT:
        return [0]
    if node.op_type in ("Conv", "Gemm"):
        return [0]
    if node.op_type == "Clip":
        return [0]
    return list(range(len(node.input)))


# Ops that only an already-quantized model holds: qcli quantizes float models, and says so when given one.
QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
QUANTIZED |= {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid"}
QUANTIZED |= {"QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QGemm"}
QUANTIZED |= {"MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "MatMulNBits"}
QUANTIZED |= {"GatherBlockQuantized", "QAttention", "QEmbedLayerNormalization"}


def already_quantized(nodes) -> str:
    """ "QuantizeLinear x9, DequantizeLinear x19" for the quantized ops among `nodes`, or ""."""
    from collections import Counter

    found = Counter(n.op_type for n in nodes if n.op_type in QUANTIZED)
    return ", ".join(f"{op} x{k}" for op, k in found.most_common())
