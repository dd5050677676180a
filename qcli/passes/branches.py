"""`If` branches and `Loop`/`Scan` bodies as models of their own, and back (graph edits only; schemes/branches.py
decides).

A branch reads tensors of the graph around it by name (its free names); a loop body also has inputs of its own
(the iteration number, the condition, the carried values, a scan's slices). `extract` makes it a standalone
model: each free name that is a constant there (an initializer) is copied in as an initializer, and each body
input and other free name becomes a graph input `in<k>` (a plain name, so that calibration files can be named
after it) read through an Identity that restores the original name for the body's nodes. `splice` puts the
quantized model back as the branch (a body with its own inputs again): the inputs' readers read the outer names
again, the copied constants are dropped where unchanged, and every name the quantization made is given the
branch's own prefix, so that names stay unique across scopes (sibling branches and the graph around them make
Q/DQ names of their own)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, helper

from qcli.core.graph import all_names, subgraphs

BRANCHES = ("then_branch", "else_branch")
BODIES = {"If": BRANCHES, "Loop": ("body",), "Scan": ("body",)}
CONTRIB = "com.microsoft"  # the onnxruntime ops qcli writes there all compute float outputs


def free_names(g: GraphProto) -> list[str]:
    """Names `g` (and its nested subgraphs) read but do not define, in first-use order."""
    defined = {t.name for t in g.initializer} | {v.name for v in g.input}
    out: dict[str, None] = {}
    for node in g.node:
        for t in node.input:
            if t and t not in defined:
                out[t] = None
        for sub in subgraphs(node):
            for t in free_names(sub):
                if t not in defined:
                    out[t] = None
        defined.update(o for o in node.output if o)
    for v in g.output:
        if v.name not in defined:
            out[v.name] = None
    return list(out)


@dataclass(frozen=True)
class Extracted:
    model: ModelProto
    inputs: dict[str, str]  # graph input name -> the outer tensor it stands for
    copied: frozenset[str]  # outer constants copied in as initializers


def extract(model: ModelProto, branch: GraphProto, types: dict[str, int]) -> Extracted:
    """`branch` (of an If in `model`'s main graph) as a model with `model`'s opsets. `types`: the element type
    of the main graph's tensors (shape inference)."""
    consts = {t.name: t for t in model.graph.initializer}
    g = GraphProto()
    g.CopyFrom(branch)
    g.name = "branch"
    del g.input[:]
    inputs, copied, feeders = {}, set(), []
    for v in branch.input:  # a loop body's own inputs
        name = f"in{len(inputs)}"
        inputs[name] = v.name
        g.input.append(
            helper.make_tensor_value_info(name, v.type.tensor_type.elem_type or onnx.TensorProto.FLOAT, None)
        )
        feeders.append(helper.make_node("Identity", [name], [v.name], name=f"{name}/restore"))
    for t in free_names(branch):
        if t in consts:
            g.initializer.add().CopyFrom(consts[t])
            copied.add(t)
            continue
        name = f"in{len(inputs)}"
        inputs[name] = t
        g.input.append(helper.make_tensor_value_info(name, types.get(t, onnx.TensorProto.FLOAT), None))
        feeders.append(helper.make_node("Identity", [name], [t], name=f"{name}/restore"))
    nodes = feeders + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return Extracted(m, inputs, frozenset(copied))


def splice(
    branch: GraphProto, quantized: ModelProto, extracted: Extracted, prefix: str, types: dict[str, int]
) -> GraphProto:
    """The branch as `quantized` computes it, its names made unique with `prefix`. `types`: element types of
    `quantized`'s tensors: an output the branch left untyped gets its type (a typed body under an untyped output
    fails onnx's type check)."""
    q = quantized.graph
    g = GraphProto()
    g.name = branch.name
    ins = extracted.inputs
    original = all_names(branch)
    outer = set(ins.values()) | extracted.copied
    made = {n for n in all_names(q) if n not in original and n not in outer and n not in ins}
    rename = {n: prefix + n for n in made} | ins  # in<k> (where an Identity was folded away) -> the outer name
    for node in q.node:
        if node.op_type == "Identity" and node.input[0] in ins and node.output[0] == ins[node.input[0]]:
            continue  # the Identity restoring an outer name: the branch reads it itself
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        _rename(copy, rename)
        g.node.append(copy)
        if copy.domain == CONTRIB:  # onnx cannot type their outputs, and a typed reader inside a body needs it
            g.value_info.extend(
                helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in copy.output if o
            )
    for t in q.initializer:
        if t.name in extracted.copied:
            continue  # still the outer constant (a quantized copy has a new name)
        c = g.initializer.add()
        c.CopyFrom(t)
        c.name = rename.get(t.name, t.name)
    g.input.extend(branch.input)
    for v in branch.output:
        out = g.output.add()
        out.CopyFrom(v)
        if not out.type.tensor_type.elem_type and types.get(v.name):
            out.type.tensor_type.elem_type = types[v.name]
    return g


def _rename(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    node.name = rename.get(node.name, node.name)
    for i, t in enumerate(node.input):
        node.input[i] = rename.get(t, t)
    for i, t in enumerate(node.output):
        node.output[i] = rename.get(t, t)
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            _rename_graph(a.g, rename)
        elif a.type == AttributeProto.GRAPHS:
            for sub in a.graphs:
                _rename_graph(sub, rename)


def _rename_graph(g: GraphProto, rename: dict[str, str]) -> None:
    for node in g.node:
        _rename(node, rename)
    for t in g.initializer:
        t.name = rename.get(t.name, t.name)
    for v in [*g.input, *g.output]:
        v.name = rename.get(v.name, v.name)


def hoist_shared(model: ModelProto, if_node: onnx.NodeProto, prefix: str) -> int:
    """Initializers equal in every byte held by more than one branch of `if_node` (each branch quantized the
    same outer weight on its own) become one main-graph initializer both read. Returns how many were hoisted."""
    seen: dict[tuple, list[tuple[GraphProto, onnx.TensorProto]]] = {}
    graphs = [a.g for a in if_node.attribute if a.name in BRANCHES]
    for g in graphs:
        for t in g.initializer:
            key = (t.data_type, tuple(t.dims), hashlib.sha256(_bytes(t)).digest())
            seen.setdefault(key, []).append((g, t))
    taken = all_names(model.graph)
    hoisted = 0
    for holders in seen.values():
        if len({id(g) for g, _ in holders}) < 2:
            continue
        name, k = f"{prefix}shared{hoisted}", 0
        while name in taken:
            k += 1
            name = f"{prefix}shared{hoisted}_{k}"
        taken.add(name)
        top = model.graph.initializer.add()
        top.CopyFrom(holders[0][1])
        top.name = name
        for g, t in holders:
            old = t.name
            _rename_graph(g, {old: name})
            for i in reversed([i for i, x in enumerate(g.initializer) if x.name == name]):
                del g.initializer[i]
        hoisted += 1
    return hoisted


def _bytes(t: onnx.TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    bare = onnx.TensorProto()
    bare.CopyFrom(t)
    bare.name = ""
    return bare.SerializeToString(deterministic=True)
