"""Read-only views of a GraphProto that passes and the planner share: who produces and consumes what."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, NodeProto, TensorProto, helper, numpy_helper


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

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def escapes(self, name: str) -> bool:
        """True when something other than a main-graph node reads the tensor."""
        return name in self.graph_outputs or name in self.subgraph_refs


def attr(node: NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _outer_scope_refs(g: GraphProto) -> set[str]:
    refs: set[str] = set()
    for node in g.node:
        for a in node.attribute:
            subs = list(a.g and [a.g] or []) + list(a.graphs)
            for sub in subs:
                for n in sub.node:
                    refs.update(i for i in n.input if i)
                refs |= _outer_scope_refs(sub)
    return refs


class Namer:
    """Short unique names: on small models long Q/DQ names weigh in the file size."""

    def __init__(self, graph: GraphProto, prefix: str = "") -> None:
        self.used = {t.name for t in graph.initializer} | {n.name for n in graph.node}
        for n in graph.node:
            self.used.update(n.input)
            self.used.update(n.output)
        self.used |= {v.name for v in graph.input} | {v.name for v in graph.output}
        self.prefix = prefix
        self.n = 0

    def __call__(self, stem: str) -> str:
        while True:
            name = f"{self.prefix}{stem}{self.n}"
            self.n += 1
            if name not in self.used:
                self.used.add(name)
                return name
