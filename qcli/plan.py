"""QuantPlan: what gets quantized how, and for every node left float, why. Pure data, JSON-serialisable."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum


class Action(str, Enum):
    INT8 = "int8"  # runs as an integer kernel (QLinearConv, QGemm, QLinearMatMul, QLinearAdd, ...)
    INT8_OUT_FLOAT = "int8-float-out"  # MatMul/Gemm on int8 inputs writing float (MatMulIntegerToFloat, QGemm)
    PASSTHROUGH = "int8-passthrough"  # moves int8 data (Reshape, MaxPool, ...): the runtime drops its Q/DQ
    FOLDED = "folded-into-q"  # Relu/Clip removed: the following QuantizeLinear's saturation does the clamp
    INT4_WEIGHT = "int4-weight"  # weight-only int4 blocks, float compute
    FLOAT = "float"


@dataclass(frozen=True)
class NodeDecision:
    node: str
    op_type: str
    action: Action
    reason: str = ""


@dataclass(frozen=True)
class ActivationQuant:
    """Q/DQ parameters of one activation tensor. `share` names the tensor whose parameters are reused."""

    tensor: str
    scale: float
    zero_point: int
    qtype: str
    share: str | None = None
    # Parameters of the QuantizeLinear writing this tensor when they differ from the DequantizeLinear's:
    # the producer's raw output is quantized straight into this tensor's integers (see fold.py).
    q_scale: float | None = None
    q_zero_point: int | None = None


@dataclass(frozen=True)
class WeightQuant:
    """A constant input of a node that is stored quantized. role: weight | bias | const."""

    node: str
    input_index: int
    tensor: str
    qtype: str
    role: str
    axis: int | None = None
    block_size: int | None = None
    symmetric: bool = True
    algo: str = "rtn"  # weights/ registry name


@dataclass
class QuantPlan:
    scheme: str
    nodes: list[NodeDecision] = field(default_factory=list)
    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: list[WeightQuant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def decision(self, node: str) -> NodeDecision | None:
        return next((d for d in self.nodes if d.node == node), None)

    def by_action(self, *actions: Action) -> list[NodeDecision]:
        return [d for d in self.nodes if d.action in actions]

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = {}
        for d in self.nodes:
            out.setdefault(d.action.value, Counter())[d.op_type] += 1
        return {k: dict(sorted(v.items())) for k, v in out.items()}

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "summary": self.summary(),
            "notes": list(self.notes),
            "nodes": [{**asdict(d), "action": d.action.value} for d in self.nodes],
            "activations": {k: asdict(v) for k, v in self.activations.items()},
            "weights": [asdict(w) for w in self.weights],
        }
