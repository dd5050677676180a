"""Decide a W4A16 plan: int4 block-wise weights for MatMul/Gemm with constant weights; all compute float."""

from __future__ import annotations

from onnx import ModelProto

from .config import QuantConfig
from .graph import GraphIndex, attr
from .plan import Action, NodeDecision, QuantPlan, WeightQuant


def plan_w4a16(model: ModelProto, config: QuantConfig) -> QuantPlan:
    idx = GraphIndex(model.graph)
    qtype = "int4" if config.weight_symmetric_int4 else "uint4"
    plan = QuantPlan(scheme=config.scheme.value)
    for node in model.graph.node:
        reason = _problem(node, idx, config)
        if reason is None:
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
            plan.nodes.append(NodeDecision(node.name, node.op_type, Action.FLOAT, reason))
    return plan


def _problem(node, idx: GraphIndex, config: QuantConfig) -> str | None:
    if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
        return ""
    if node.name in config.exclude or node.op_type in config.exclude:
        return "excluded by --exclude"
    if node.op_type.startswith("Conv"):
        return "w4a16 quantizes MatMul/Gemm weights only; convolutions stay float"
    w = node.input[1]
    if not idx.is_const(w):
        return "second input is not a constant initializer (activation x activation)"
    t = idx.inits[w]
    if t.data_type != 1:
        return "weight is not float32"
    if len(t.dims) != 2:
        return f"weight has rank {len(t.dims)}; block-wise int4 needs a 2-D weight"
    if node.op_type == "Gemm" and (attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0):
        return "Gemm with transA or alpha != 1"
    k = t.dims[1] if node.op_type == "Gemm" and attr(node, "transB", 0) else t.dims[0]
    if k < config.block_size:
        return f"reduction dimension {k} is smaller than one block ({config.block_size})"
    return None
