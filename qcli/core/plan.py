"""QuantPlan: what gets quantized how, and for every node left float, why. Pure data, JSON-serialisable.

A reason is a kind plus details (data); its text is rendered from them here, at the edge, and nothing
parses it back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class Action(str, Enum):
    INT8 = "int8"  # runs as an integer kernel (QLinearConv, QGemm, QLinearMatMul, QLinearAdd, ...)
    INT8_OUT_FLOAT = "int8-float-out"  # int8 inputs, float output (MatMulIntegerToFloat, QGemm; ArgMax)
    PASSTHROUGH = "int8-passthrough"  # moves int8 data (Reshape, MaxPool, ...): the runtime drops its Q/DQ
    FOLDED = "folded-into-q"  # Relu/Clip removed: the following QuantizeLinear's saturation does the clamp
    INT4_WEIGHT = "int4-weight"  # weight-only int4 blocks, float compute
    INT8_WEIGHT = "int8-weight"  # weight-only int8 blocks (w8a16), float compute; int8 embedding tables
    FLOAT = "float"


class Why(str, Enum):
    """Why a compute node stays float."""

    EXCLUDED = "excluded"  # --exclude matched it
    NO_INT_KERNEL = "no-int-kernel"  # the runtime has no integer kernel for the op
    UNSUPPORTED = "unsupported"  # its inputs cannot be quantized (not constant, not float32, shape, ...)
    SPEED = "speed"  # the cost model: Q/DQ at its edges would cost more than int8 wins
    ACCURACY = "accuracy"  # the accuracy guard: an input quantizes too badly
    UNOBSERVED = "unobserved"  # a tensor it needs was never seen during calibration
    SCHEME = "scheme"  # the scheme does not quantize this op (e.g. convolutions under w4a16)
    TARGET = "accuracy-target"  # returned to float (w4a16: 8-bit blocks) to meet --min-sqnr / --max-top1-drop
    MEASURED = "measured"  # timed on this CPU: the model ran faster with it float (--placement measured)


# The plan JSON's layout (`--dry-run --json`, the report's "plan"; docs/reports.md#schema).
PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Reason:
    kind: Why
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return _TEXT[self.kind](self.details)


def reason(kind: Why, **details: Any) -> Reason:
    return Reason(kind, details)


_TEXT = {
    Why.EXCLUDED: lambda d: (
        f"excluded by --overrides {d['pattern']}"
        if d["pattern"].startswith("[nodes.")
        else f"excluded by --exclude {d['pattern']!r}"
    ),
    Why.NO_INT_KERNEL: lambda d: (
        f"onnxruntime's CPU provider has no integer {d['op']} kernel: Q/DQ would only add time"
    ),
    Why.UNSUPPORTED: lambda d: d["problem"],
    Why.SPEED: lambda d: (
        f"kept float for speed: {d['macs_per_conversion']:.1f} MACs per element converted to/from int8 "
        f"(< {d['threshold']:g}), Q/DQ would cost more than int8 wins"
    ),
    Why.ACCURACY: lambda d: (
        f"kept float for accuracy: its input {d['tensor']!r} quantizes to {d['sqnr_db']:.1f} dB "
        f"per tensor (< --min-act-sqnr {d['threshold']:g}; a few outliers set its range)"
        if "tensor" in d
        else f"kept float for accuracy: int8, it causes {d['share']:.0%} of the output noise (alone back to "
        f"float, the worst output goes from {d['int8_db']:.1f} to {d['float_db']:.1f} dB)"
        if "share" in d
        else "kept float for accuracy (being measured)"
    ),
    Why.UNOBSERVED: lambda d: f"tensor {d['tensor']!r} was not observed during calibration",
    Why.SCHEME: lambda d: d["problem"],
    Why.MEASURED: lambda d: (
        f"kept float for speed, measured on this CPU: with the {d['group']} float the model ran "
        f"{d['ratio']:.2f}x the time of the plan with them int8"
    ),
    Why.TARGET: lambda d: (
        f"{'8-bit blocks' if d.get('bits') == 8 else 'returned to float'} to meet the accuracy target "
        f"(rank {d['rank']} by the noise it adds)"
    ),
}


@dataclass(frozen=True)
class NodeDecision:
    node: str
    op_type: str
    action: Action
    reason: Reason | None = None

    @property
    def why(self) -> Why | None:
        return self.reason.kind if self.reason else None

    def to_dict(self) -> dict:
        r = self.reason
        return {
            "node": self.node,
            "op_type": self.op_type,
            "action": self.action.value,
            "reason": None if r is None else {"kind": r.kind.value, "text": r.text, **r.details},
        }


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
    # Where the parameters came from: the calibration method that chose the range (for "auto" the winner),
    # and that range, before it was widened to include zero.
    method: str | None = None
    range: tuple[float, float] | None = None


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
    # Smallest |scale| per output channel, where the int32 bias would overflow with the weight's own
    # scales (bias / (input scale * weight scale) > 2^31 - 1): a planner decision, the pass obeys it.
    scale_floor: tuple[float, ...] | None = None


@dataclass
class QuantPlan:
    scheme: str
    nodes: list[NodeDecision] = field(default_factory=list)
    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: list[WeightQuant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # outcomes the user should not miss (nothing quantized)
    # The effective configuration: what was decided where the config left a choice, and why.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)  # node -> precision set by the overrides file
    # W8A8: int8 anchors that convert some input or output, and their MACs per converted element
    macs_per_conversion: dict[str, float] = field(default_factory=dict)
    # W8A8: per int8 Conv/Gemm, the shift added to its bias per output channel (steps/bias.py)
    bias_corrections: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # The plans of If branches quantized as models of their own (schemes/branches.py), by "<If node>/<branch>"
    branches: dict[str, QuantPlan] = field(default_factory=dict)

    def quantizes(self) -> bool:
        """Whether anything is quantized, in the main graph or in a branch."""
        return bool(self.weights or self.activations) or any(b.quantizes() for b in self.branches.values())

    def every(self, prefix: str = ""):
        """(name, decision) for every node, the branches' and bodies' included as "<node>/<branch>/<name>"."""
        yield from ((prefix + d.node, d) for d in self.nodes)
        for key, b in self.branches.items():
            yield from b.every(f"{prefix}{key}/")

    def decision(self, node: str) -> NodeDecision | None:
        return next((d for d in self.nodes if d.node == node), None)

    def by_action(self, *actions: Action) -> list[NodeDecision]:
        return [d for d in self.nodes if d.action in actions]

    def by_reason(self, *kinds: Why) -> list[NodeDecision]:
        return [d for d in self.nodes if d.why in kinds]

    def summary(self) -> dict[str, dict[str, int]]:
        """Nodes by action and op type, the branches' included."""
        out: dict[str, Counter] = {}
        for d in self.nodes:
            out.setdefault(d.action.value, Counter())[d.op_type] += 1
        for b in self.branches.values():
            for action, ops in b.summary().items():
                out.setdefault(action, Counter()).update(ops)
        return {k: dict(sorted(v.items())) for k, v in out.items()}

    def to_dict(self) -> dict:
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "scheme": self.scheme,
            "summary": self.summary(),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "decisions": self.decisions,
            "overrides": self.overrides,
            "nodes": [d.to_dict() for d in self.nodes],
            "activations": {k: asdict(v) for k, v in self.activations.items()},
            "weights": [asdict(w) for w in self.weights],
            "bias_corrections": {k: list(v) for k, v in self.bias_corrections.items()},
            **({"branches": {k: b.to_dict() for k, b in self.branches.items()}} if self.branches else {}),
        }


@dataclass(frozen=True)
class Promotion:
    """What measured placement tries on int8 beyond the static plan: anchors kept int8 whatever the cost model
    says, and op types of ops.TRIAL let into int8 regions."""

    anchors: frozenset[str] = frozenset()
    ops: frozenset[str] = frozenset()


NO_PROMOTION = Promotion()
