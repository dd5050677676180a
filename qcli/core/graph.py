"""Read-only views of a GraphProto that passes and the planner share: who produces and consumes what."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


@dataclass
class GraphIndex:
    graph: GraphProto

    def __post_init__(self) -> None:
        g = self.graph
        self.inits: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        for node in g.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.graph_outputs = {o.name for o in g.output}
        self.graph_inputs = {i.name for i in g.input if i.name not in self.inits}
        self.subgraph_refs = _outer_scope_refs(g)
        self._scalars: dict[str, float | None] = {}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def scalar(self, name: str) -> float | None:
        """The value of a one-element, finite float initializer, else None (memoized: the planner asks for
        each Mul/Add operand once per candidate plan)."""
        if name not in self._scalars:
            t, value = self.inits.get(name), None
            if t is not None and t.data_type == FLOAT and math.prod(t.dims) == 1:
                v = numpy_helper.to_array(t)
                value = float(v.reshape(())) if np.isfinite(v).all() else None
            self._scalars[name] = value
        return self._scalars[name]

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def is_float_const(self, name: str) -> bool:
        return name in self.inits and self.inits[name].data_type == FLOAT

    def escapes(self, name: str) -> bool:
        """True when something other than a main-graph node reads the tensor."""
        return name in self.graph_outputs or name in self.subgraph_refs


def drop_nodes(graph: GraphProto, ids: set[int]) -> None:
    """Remove the nodes whose id() is in `ids`, keeping the others in order."""
    if ids:
        keep = [n for n in graph.node if id(n) not in ids]
        del graph.node[:]
        graph.node.extend(keep)


def attr(node: NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def subgraphs(node: NodeProto) -> list[GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop/Scan bodies)."""
    out: list[GraphProto] = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _outer_scope_refs(g: GraphProto) -> set[str]:
    refs: set[str] = set()
    for node in g.node:
        for sub in subgraphs(node):
            for n in sub.node:
                refs.update(i for i in n.input if i)
            refs |= _outer_scope_refs(sub)
    return refs


def all_names(g: GraphProto) -> set[str]:
    """Every tensor, node, initializer, input and output name in the graph and its subgraphs."""
    used = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
    used |= {v.name for v in g.value_info} | {t.name for t in g.sparse_initializer}
    for n in g.node:
        used.add(n.name)
        used.update(n.input)
        used.update(n.output)
        for sub in subgraphs(n):
            used |= all_names(sub)
    used.discard("")
    return used


class Namer:
    """Names that are free in the graph, subgraphs included. Short by default: on small models long Q/DQ
    names weigh in the file size."""

    def __init__(self, graph: GraphProto, prefix: str = "") -> None:
        self.used = all_names(graph)
        self.prefix = prefix
        self.n = 0

    def __call__(self, stem: str) -> str:
        while True:
            name = f"{self.prefix}{stem}{self.n}"
            self.n += 1
            if name not in self.used:
                self.used.add(name)
                return name

    def fresh(self, name: str) -> str:
        """`name` itself when it is free, else `name_<k>` with the smallest free k."""
        k, candidate = 1, name
        while candidate in self.used:
            candidate, k = f"{name}_{k}", k + 1
        self.used.add(candidate)
        return candidate


def name_nodes(g: GraphProto) -> int:
    """Give every unnamed or duplicate-named node of the main graph a unique name (the plan is keyed by
    node name). Names already unique are kept. Returns how many nodes were renamed."""
    namer = Namer(g)
    seen: set[str] = set()
    renamed = 0
    for node in g.node:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        node.name = namer.fresh(node.name or node.op_type)
        seen.add(node.name)
        renamed += 1
    return renamed


def add_initializer(model, name: str, value: np.ndarray) -> TensorProto:
    """Append `value` as initializer `name` (before IR 4 an initializer must also be a graph input)."""
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    if model.ir_version < 4:
        dtype = helper.np_dtype_to_tensor_dtype(value.dtype)
        model.graph.input.append(helper.make_tensor_value_info(name, dtype, value.shape))
    return model.graph.initializer[-1]


def broken(g: GraphProto) -> str | None:
    """Why the main graph cannot run, naming the node: an input nothing provides, or a cycle; else None.
    (Nodes out of order are not broken: onnxruntime sorts them.)"""
    provided = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    provided |= {o for n in g.node for o in n.output}
    for n in g.node:
        missing = [i for i in n.input if i not in provided]
        if missing:
            who = f"node {n.name or '(unnamed)'!r} ({n.op_type})"
            return f"{who} reads {missing[0]!r}, which no node, input or initializer provides"
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    waiting = [len({producer[i] for i in n.input if i in producer}) for n in g.node]
    readers: dict[int, list[int]] = {}
    for k, n in enumerate(g.node):
        for p in {producer[i] for i in n.input if i in producer}:
            readers.setdefault(p, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for r in readers.get(k, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    if done < len(g.node):
        stuck = [f"{n.name or '(unnamed)'!r} ({n.op_type})" for n, w in zip(g.node, waiting) if w][:4]
        return f"the graph has a cycle: node(s) {', '.join(stuck)} never get their inputs"
    return None


def data_driven_loops(g: GraphProto) -> list[str]:
    """Loop nodes whose trip count is not a constant of the graph (computed, a graph input, or none: the
    condition alone ends them): how long they run, the data decides."""
    consts = {t.name for t in g.initializer}
    consts |= {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    return [
        n.name or n.output[0] for n in g.node if n.op_type == "Loop" and (not n.input[0] or n.input[0] not in consts)
    ]
