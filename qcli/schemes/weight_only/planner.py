"""Decide a weight-only plan (W4A16: int4 blocks; W8A16: int8 blocks): the constant weights of MatMul/Gemm and
the constant tables read by Gather (embeddings), blocked along the reduction axis; all compute stays float."""

from __future__ import annotations

from collections import Counter

from onnx import ModelProto

from qcli.core.config import QuantConfig, Scheme, WeightFormat
from qcli.core.graph import FLOAT, GraphIndex, attr
from qcli.core.plan import Action, NodeDecision, QuantPlan, Reason, WeightQuant, Why, reason

WEIGHT_OPS = ("MatMul", "Gemm")
BITS = {Scheme.W4A16: 4, Scheme.W8A16: 8}
QTYPES = {(4, True): "int4", (4, False): "uint4", (8, True): "int8", (8, False): "uint8"}
ACTIONS = {4: Action.INT4_WEIGHT, 8: Action.INT8_WEIGHT}


def plan_w4a16(model: ModelProto, config: QuantConfig) -> QuantPlan:
    """The weight-only plan of `config.scheme` (w4a16 or w8a16). An explicit --format is recorded as a decision;
    --format auto is decided later by formats.choose(), which measures the candidates."""
    idx = GraphIndex(model.graph)
    bits = BITS.get(config.scheme, 4)
    qtype = QTYPES[(bits, config.weight_only.weight_symmetric_int4)]
    plan = QuantPlan(scheme=config.scheme.value)
    for node in model.graph.node:
        why = _problem(node, idx, config)
        if why is None:
            plan.nodes.append(NodeDecision(node.name, node.op_type, ACTIONS[bits]))
            plan.weights.append(_weight(node, qtype, config))
        else:
            plan.nodes.append(NodeDecision(node.name, node.op_type, Action.FLOAT, why or None))
    short = [d for d in plan.by_reason(Why.UNSUPPORTED) if {"reduction_dim", "row_length"} & set(d.reason.details)]
    if not plan.weights and short:
        plan.warnings.append(
            f"nothing was quantized: every weight's reduction dimension (every table's row) is smaller than "
            f"--block-size {config.weight_only.block_size}; use a smaller block"
        )
    if config.weight_only.weight_format != WeightFormat.AUTO:
        plan.decisions["weight_format"] = {"value": config.weight_only.weight_format.value, "why": "--format"}
    _note_shared(plan, config)
    return plan


def _weight(node, qtype: str, config: QuantConfig) -> WeightQuant:
    """Blocks run along the reduction axis: MatMul B [K, N] axis 0; Gemm B [N, K] (transB=1) axis 1; a
    Gather table [rows, D] along D (axis 1), so a table tied to a Gemm(transB=1) quantizes the same way."""
    if node.op_type == "Gather":
        index, role, axis = 0, "embedding", 1
    else:
        index, role, axis = 1, "weight", 1 if node.op_type == "Gemm" and attr(node, "transB", 0) else 0
    return WeightQuant(
        node.name,
        index,
        node.input[index],
        qtype,
        role,
        axis,
        config.weight_only.block_size,
        config.weight_only.weight_symmetric_int4,
        config.weight_only.weight_algo.value,
    )


def _problem(node, idx: GraphIndex, config: QuantConfig) -> Reason | None | str:
    """None: quantize its weight. '': not a weight op. Otherwise why it stays float."""
    is_table = node.op_type == "Gather" and idx.is_float_const(node.input[0])
    if node.op_type not in (*WEIGHT_OPS, "Conv", "ConvTranspose") and not is_table:
        return ""
    pattern = config.excluded_by(node.name, node.op_type)
    if pattern:
        return reason(Why.EXCLUDED, pattern=pattern)
    if node.op_type.startswith("Conv"):
        return reason(
            Why.SCHEME,
            problem=f"{config.scheme.value} quantizes MatMul/Gemm weights and Gather tables only; "
            "convolutions stay float",
        )
    if is_table:
        return _table_problem(node, idx, config.weight_only.block_size)
    problem = _weight_problem(node, idx)
    if problem:
        return reason(Why.UNSUPPORTED, problem=problem)
    w = idx.inits[node.input[1]]
    k = w.dims[1] if node.op_type == "Gemm" and attr(node, "transB", 0) else w.dims[0]
    if k < config.weight_only.block_size:
        return reason(
            Why.UNSUPPORTED,
            problem=f"reduction dimension {k} is smaller than one block ({config.weight_only.block_size})",
            reduction_dim=k,
        )
    return None


def _table_problem(node, idx: GraphIndex, block: int) -> Reason | None:
    dims = idx.inits[node.input[0]].dims
    if len(dims) != 2:
        return reason(Why.UNSUPPORTED, problem=f"table has rank {len(dims)}; block-wise Gather needs a 2-D table")
    if attr(node, "axis", 0) not in (0, -2):
        return reason(Why.UNSUPPORTED, problem="Gather along the table's axis 1 (columns) is left float")
    if dims[1] < block:
        return reason(
            Why.UNSUPPORTED, problem=f"table rows of {dims[1]} are shorter than one block ({block})", row_length=dims[1]
        )
    return None


def _weight_problem(node, idx: GraphIndex) -> str | None:
    w = node.input[1]
    if not idx.is_const(w):
        return "second input is not a constant initializer (activation x activation)"
    t = idx.inits[w]
    if t.data_type != FLOAT:
        return "weight is not float32"
    if len(t.dims) != 2:
        return f"weight has rank {len(t.dims)}; block-wise quantization needs a 2-D weight"
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return "Gemm with transA=1 (the activation transposed) is left float"
    return None


def _note_shared(plan: QuantPlan, config: QuantConfig) -> None:
    """The portable form stores a weight once per MatMul reading it: onnxruntime fuses DequantizeLinear ->
    MatMul into MatMulNBits only where the DequantizeLinear is its initializers' sole reader."""
    if config.weight_only.weight_format == WeightFormat.ORT:
        return
    readers = Counter(w.tensor for w in plan.weights if w.role == "weight")
    shared = sorted(t for t, n in readers.items() if n > 1)
    if shared:
        plan.notes.append(
            f"{len(shared)} weight(s) read by several MatMul/Gemm ({', '.join(shared[:3])}): the qdq form stores "
            "one copy per reader so that onnxruntime fuses each into MatMulNBits; --format ort stores one"
        )
