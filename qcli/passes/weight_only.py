"""The rewrite both weight-only forms share. Each planned weight is read as rows [N, K] (Gemm's alpha folded
in) and quantized once per key (tensor, blocked axis, alpha, settings); a Gemm becomes the weight op + Add(beta
* C). A form (blockwise.py: DequantizeLinear, portable; nbits.py: onnxruntime's MatMulNBits / GatherBlockQuantized)
writes the nodes that read the quantized weight."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from qcli.core import qparams as qp
from qcli.core.errors import InternalError
from qcli.core.graph import GraphIndex, Namer, attr
from qcli.core.plan import QuantPlan, WeightQuant
from qcli.passes.preprocess import drop_unused_initializers
from qcli.weights import (
    DEFAULT_OPTIONS,
    BlockWeight,
    WeightError,
    WeightOptions,
    WeightStats,
    quantize_rows,
    relative_errors,
    requires_statistics,
)

# (float tensor, the axis its blocks run along, Gemm alpha, qtype, block size, symmetric, algorithm)
Key = tuple[str, int, float, str, int, bool, str]


def key_of(node: NodeProto, w: WeightQuant) -> Key:
    alpha = float(attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    return (w.tensor, int(w.axis), alpha, w.qtype, int(w.block_size), bool(w.symmetric), w.algo)


def rows_of(idx: GraphIndex, key: Key) -> np.ndarray:
    """The float weight as [N, K] rows: axis 1 blocks (Gemm transB=1, Gather tables) as stored, axis 0 (MatMul
    [K, N]) transposed; times Gemm's alpha."""
    tensor, axis, alpha = key[:3]
    w = idx.const(tensor).astype(np.float32)
    w = w if axis == 1 else w.T
    if alpha != 1.0:
        w = w * np.float32(alpha)
    return np.ascontiguousarray(w, dtype=np.float32)


def quantize_plan(
    model: ModelProto,
    plan: QuantPlan,
    skip: set[Key] | None = None,
    stats: dict[str, WeightStats] | None = None,
    options: WeightOptions = DEFAULT_OPTIONS,
    advance: Callable[[], None] = lambda: None,
) -> dict[Key, BlockWeight]:
    """Every planned weight quantized, once per key (a weight read twice the same way is quantized once);
    keys in `skip` (quantized already) are left out. `stats` (schemes/weight_only/stats.collect: weight name ->
    statistics of its input) feed the data-aware algorithms and the clipping search; tables (Gather) have none.
    `advance` is called after each key (pending_keys counts them beforehand)."""
    idx = GraphIndex(model.graph)
    out: dict[Key, BlockWeight] = {}
    stats = stats or {}
    for key, w in _pending(model, plan, skip).items():
        if requires_statistics(w.algo) and w.role == "weight" and w.tensor not in stats:
            raise InternalError(f"internal error: {w.algo} needs the input statistics of weight {w.tensor!r}")
        rows, qtype = rows_of(idx, key), qp.QTYPES[w.qtype]
        s = _matching(stats, key, rows)
        out[key] = quantize_rows(rows, qtype, w.symmetric, w.block_size, w.algo, s, options)
        advance()
    return out


def pending_keys(model: ModelProto, plan: QuantPlan, skip: set[Key] | None = None) -> int:
    """How many keys quantize_plan would quantize (for a progress bar's total)."""
    return len(_pending(model, plan, skip))


def _pending(model: ModelProto, plan: QuantPlan, skip: set[Key] | None) -> dict[Key, WeightQuant]:
    """The plan's weights by key, the first of each key in plan order, those in `skip` left out."""
    nodes = {n.name: n for n in model.graph.node}
    out: dict[Key, WeightQuant] = {}
    for w in plan.weights:
        if w.node in nodes:
            out.setdefault(key_of(nodes[w.node], w), w)
    return {k: w for k, w in out.items() if k not in (skip or set())}


def _matching(stats: dict[str, WeightStats], key: Key, rows: np.ndarray) -> WeightStats | None:
    """The statistics of the tensor's MatMul input, where they describe these rows' K (a table tied to a MatMul
    weight may be read along the other axis)."""
    s = stats.get(key[0])
    return s if s is not None and s.k == rows.shape[1] else None


def weight_errors(
    model: ModelProto, quantized: dict[Key, BlockWeight], stats: dict[str, WeightStats] | None = None
) -> dict[Key, WeightError]:
    """Per quantized weight, ||W - Q||^2 / ||W||^2 and (with its input's statistics) tr(E H E^T) / tr(W H W^T).
    `model` is the float graph the weights were quantized from (before apply_weight_only rewrites it in place)."""
    idx = GraphIndex(model.graph)
    stats = stats or {}
    out = {}
    for key, bw in quantized.items():
        rows = rows_of(idx, key)
        out[key] = relative_errors(rows, bw, _matching(stats, key, rows))
    return out


class Rewriter:
    """The graph under rewrite: fresh names, new initializers, the output node list."""

    def __init__(self, model: ModelProto) -> None:
        self.model = model
        self.name = Namer(model.graph)
        self.nodes: list[NodeProto] = []

    def init(self, stem: str, value: np.ndarray) -> str:
        n = self.name(stem)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def add(self, op: str, inputs: list[str], outputs: list[str], name: str | None = None, **attrs) -> None:
        domain = attrs.pop("domain", None)
        self.nodes.append(
            helper.make_node(op, inputs, outputs, name=name or self.name(op.lower()), domain=domain, **attrs)
        )


class Form(Protocol):
    def matmul(self, rw: Rewriter, a: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        """Nodes computing out = a @ dequantized(w).T, the last one named `name`."""

    def gather(self, rw: Rewriter, ids: str, w: BlockWeight, key: Key, out: str, name: str) -> None:
        """Nodes computing out = dequantized(w)[ids] (Gather along axis 0), one of them named `name`."""

    def finish(self, model: ModelProto) -> None:
        """Opset imports, IR version: what the written nodes and initializers need."""


def rewrite(
    model: ModelProto,
    plan: QuantPlan,
    form: Form,
    quantized: dict[Key, BlockWeight] | None = None,
    inplace: bool = False,
) -> ModelProto:
    m = model if inplace else ModelProto()
    if not inplace:
        m.CopyFrom(model)
    quantized = {**quantize_plan(m, plan, skip=set(quantized or ())), **(quantized or {})}
    idx = GraphIndex(m.graph)
    rw = Rewriter(m)
    weights = {w.node: w for w in plan.weights}
    for node in m.graph.node:
        wq = weights.get(node.name)
        if wq is None:
            rw.nodes.append(node)
            continue
        key = key_of(node, wq)
        w = quantized[key]
        if node.op_type == "Gather":
            form.gather(rw, node.input[1], w, key, node.output[0], node.name)
        elif node.op_type == "MatMul":
            form.matmul(rw, node.input[0], w, key, node.output[0], node.name)
        else:
            _gemm(rw, idx, node, form, w, key)
    del m.graph.node[:]
    m.graph.node.extend(rw.nodes)
    drop_unused_initializers(m)
    form.finish(m)
    return m


def _gemm(rw: Rewriter, idx: GraphIndex, node: NodeProto, form: Form, w: BlockWeight, key: Key) -> None:
    """Gemm(A, B, C) -> weight op(A) [+ Add(beta * C)]; alpha is already in the weight."""
    has_bias = len(node.input) > 2 and node.input[2]
    mm_out = rw.name("mm") if has_bias else node.output[0]
    form.matmul(rw, node.input[0], w, key, mm_out, node.name)
    if not has_bias:
        return
    c, beta = node.input[2], np.float32(attr(node, "beta", 1.0))
    if beta != 1.0 and idx.is_const(c):
        c = rw.init("c", (idx.const(c) * beta).astype(np.float32))
    elif beta != 1.0:  # C computed at run time: scale it there
        scaled = rw.name("c")
        rw.add("Mul", [c, rw.init("beta", np.array(beta))], [scaled])
        c = scaled
    rw.add("Add", [mm_out, c], [node.output[0]])
