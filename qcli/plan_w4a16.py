"""Decide a W4A16 plan: int4 block-wise weights for MatMul/Gemm with constant weights; all compute float."""

from __future__ import annotations

from onnx import ModelProto

from .config import QuantConfig
from .graph import FLOAT, GraphIndex, attr
from .plan import Action, NodeDecision, QuantPlan, Reason, WeightQuant, Why, reason


def plan_w4a16(model: ModelProto, config: QuantConfig) -> QuantPlan:
    idx = GraphIndex(model.graph)
    qtype = "int4" if config.weight_symmetric_int4 else "uint4"
    plan = QuantPlan(scheme=config.scheme.value)
    for node in model.graph.node:
        why = _problem(node, idx, config)
        if why is None:
            plan.nodes.append(NodeDecision(node.name, node.op_type, Action.INT4_WEIGHT))
            # MatMul B is [K, N]; Gemm B is [N, K] when transB=1. Blocks run along K (the reduction axis).
            axis = 1 if node.op_type == "Gemm" and attr(node, "transB", 0) else 0
            plan.weights.append(
                WeightQuant(
                    node.name,
                    1,
                    node.input[1],
                    qtype,
                    "weight",
                    axis,
                    config.block_size,
                    config.weight_symmetric_int4,
                    config.weight_algo.value,
                )
            )
        else:
            plan.nodes.append(NodeDecision(node.name, node.op_type, Action.FLOAT, why or None))
    if not plan.weights and any("reduction_dim" in d.reason.details for d in plan.by_reason(Why.UNSUPPORTED)):
        plan.warnings.append(
            f"nothing was quantized: every weight's reduction dimension is smaller than --block-size "
            f"{config.block_size}; use a smaller block"
        )
    return plan


def _problem(node, idx: GraphIndex, config: QuantConfig) -> Reason | None | str:
    """None: quantize its weight. '': not a weight op. Otherwise why it stays float."""
    if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
        return ""
    pattern = config.excluded_by(node.name, node.op_type)
    if pattern:
        return reason(Why.EXCLUDED, pattern=pattern)
    if node.op_type.startswith("Conv"):
        return reason(Why.SCHEME, problem="w4a16 quantizes MatMul/Gemm weights only; convolutions stay float")
    problem = _weight_problem(node, idx)
    if problem:
        return reason(Why.UNSUPPORTED, problem=problem)
    w = idx.inits[node.input[1]]
    k = w.dims[1] if node.op_type == "Gemm" and attr(node, "transB", 0) else w.dims[0]
    if k < config.block_size:
        return reason(
            Why.UNSUPPORTED,
            problem=f"reduction dimension {k} is smaller than one block ({config.block_size})",
            reduction_dim=k,
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
        return f"weight has rank {len(t.dims)}; block-wise int4 needs a 2-D weight"
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return "Gemm with transA=1 (the activation transposed) is left float"
    return None
