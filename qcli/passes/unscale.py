"""Channel scaling undone where it buys nothing: a scaling Mul (channel_scale.py, conv_out_scale.py) exists so
that the tensor it equalizes quantizes well; where the plan written leaves that tensor float, the Mul only costs
time (a float pass over the tensor) and the weights it moved differ from the user's by rounding. Those edits are
taken back exactly: the Mul removed, the graph wired as before, each weight it scaled restored from the copy
kept when it was scaled. An edit stays where the plan quantizes one of the weights it scaled, or where it
shares a weight with an edit that stays (restoring would undo the other). So an idle edit touches only float
nodes, and is taken back the same in the float model or in the model the plan's rewrite made of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import ModelProto, TensorProto

from qcli.core.plan import QuantPlan
from qcli.passes.preprocess import drop_unused_initializers
from qcli.passes.qdq import apply_w8a8

# What Editor.put changed for one edit: (node, input index, the name it read, the tensor before if in place)
WeightLog = tuple[tuple[str, int, str, TensorProto | None], ...]


@dataclass(frozen=True)
class ScalingEdit:
    mul: str  # the inserted Mul node
    original: str  # the float tensor as the model had it: the Mul's input, or its output
    quantized: str  # the Mul's other side, the tensor it equalizes: worth it only where the plan quantizes that
    weights: WeightLog


def idle(edits: list[ScalingEdit], plan: QuantPlan) -> list[ScalingEdit]:
    """The edits whose equalized tensor and weights the plan leaves float, and whose weights no kept edit
    also scaled."""
    quantized = {(w.node, w.input_index) for w in plan.weights}

    def touched(e: ScalingEdit) -> set[tuple[str, int]]:
        return {(n, i) for n, i, _, _ in e.weights}

    unused = [e for e in edits if e.quantized not in plan.activations and not touched(e) & quantized]
    kept = set().union(*(touched(e) for e in edits if e not in unused))
    return [e for e in unused if not touched(e) & kept]


def undo(model: ModelProto, edits: list[ScalingEdit]) -> None:
    """Take `edits` back in `model` (in place), latest first: the float model, or a rewrite of it."""
    g = model.graph
    nodes = {n.name: n for n in g.node}
    inits = {t.name: t for t in g.initializer}
    for e in reversed(edits):
        mul = nodes.pop(e.mul)
        src, out = mul.input[0], mul.output[0]
        g.node.remove(mul)
        if out == e.original:  # conv_out_scale: the conv writes the activation's input again
            producer = next(n for n in g.node if src in n.output)
            producer.output[list(producer.output).index(src)] = out
            _drop_value_info(g, src)
        else:  # channel_scale: the readers read the activation's output again
            for n in g.node:
                for i, name in enumerate(n.input):
                    if name == out:
                        n.input[i] = src
            _drop_value_info(g, out)
        for node, i, name, before in reversed(e.weights):
            if before is not None:
                inits[name].CopyFrom(before)
            else:
                nodes[node].input[i] = name


def _drop_value_info(g, name: str) -> None:
    for v in [v for v in g.value_info if v.name == name]:
        g.value_info.remove(v)


def apply_unscaled(model: ModelProto, plan: QuantPlan, edits) -> tuple[ModelProto, dict[str, str]]:
    """The plan's W8A8 rewrite (passes/qdq.py) with the idle edits among `edits` taken back: the model written,
    and each candidate a step measures or times."""
    qmodel, qnames = apply_w8a8(model, plan)
    gone = idle(list(edits), plan)
    if gone:
        undo(qmodel, gone)
        drop_unused_initializers(qmodel)
    return qmodel, qnames
