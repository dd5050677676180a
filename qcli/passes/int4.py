"""Apply a W4A16 plan: weights become INT4/UINT4 initializers read through a blocked DequantizeLinear.

Gemm nodes become MatMul (+ Add for the bias) with the weight laid out [K, N], blocked along K: the
`DQ(int4, axis=0, block_size) -> MatMul` form that onnxruntime turns into its MatMulNBits kernel.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from .. import qparams as qp
from ..graph import GraphIndex, Namer, attr
from ..plan import QuantPlan
from ..weights import WEIGHT_ALGOS
from .preprocess import _drop_unused_initializers


def apply_w4a16(model: ModelProto, plan: QuantPlan, inplace: bool = False) -> ModelProto:
    m = model if inplace else ModelProto()
    if not inplace:
        m.CopyFrom(model)
    g = m.graph
    idx = GraphIndex(g)
    name = Namer(g)
    weights = {w.node: w for w in plan.weights}
    done: dict[tuple[str, bool, float], str] = {}  # (float weight, transposed, alpha) -> dequantized tensor
    out_nodes = []

    def add_init(stem: str, value: np.ndarray) -> str:
        n = name(stem)
        g.initializer.append(numpy_helper.from_array(value, n))
        return n

    for node in g.node:
        w = weights.get(node.name)
        if w is None:
            out_nodes.append(node)
            continue
        transposed = node.op_type == "Gemm" and bool(attr(node, "transB", 0))
        alpha = float(attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        key = (w.tensor, transposed, alpha)
        if key not in done:
            value = idx.const(w.tensor).astype(np.float32)
            value = value.T.copy() if transposed else value  # [K, N]
            if node.op_type == "Gemm" and attr(node, "alpha", 1.0) != 1.0:
                value = (value * np.float32(attr(node, "alpha", 1.0))).astype(np.float32)
            q, p = WEIGHT_ALGOS.get(w.algo)(value, qp.QTYPES[w.qtype], w.symmetric, 0, w.block_size)
            ins = [add_init("w", q), add_init("ws", p.scale)]
            if not w.symmetric:
                ins.append(add_init("wz", p.zero_point))
            done[key] = name("wd")
            out_nodes.append(
                helper.make_node("DequantizeLinear", ins, [done[key]], name=name("dq"), axis=0, block_size=w.block_size)
            )
        if node.op_type == "MatMul":
            node.input[1] = done[key]
            out_nodes.append(node)
            continue
        # Gemm(A, B, C) -> MatMul(A, B') [+ Add C]
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = name("mm") if has_bias else node.output[0]
        out_nodes.append(helper.make_node("MatMul", [node.input[0], done[key]], [mm_out], name=node.name))
        if has_bias:
            c, beta = node.input[2], np.float32(attr(node, "beta", 1.0))
            if beta != 1.0 and idx.is_const(c):
                c = add_init("c", (idx.const(c) * beta).astype(np.float32))
            elif beta != 1.0:  # C computed at run time: scale it there
                scaled = name("c")
                out_nodes.append(
                    helper.make_node("Mul", [c, add_init("beta", np.array(beta))], [scaled], name=name("mul"))
                )
                c = scaled
            out_nodes.append(helper.make_node("Add", [mm_out, c], [node.output[0]], name=name("add")))
    del g.node[:]
    g.node.extend(out_nodes)
    _drop_unused_initializers(m)
    return m
