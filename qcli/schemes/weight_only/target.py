"""An accuracy target for the weight-only schemes (`--min-sqnr`, `--max-top1-drop` with w4a16 / w8a16): the
fewest weights made one step more precise until every output meets it. Under w4a16 a weight goes from 4-bit to
8-bit blocks (same block size, symmetry and algorithm); under w8a16 it goes back to float.

The search is target.py's: the weight ops ranked once by the noise each adds at its output in the first model
(matched by tensor name, measure/layerwise.py) per element of its weight, so that a small weight adding as much noise as
an embedding table goes first (raising it costs a fraction of the bytes); then k doubling until the target is
met and bisecting down to the fewest. Each candidate is measured in the form that will be written (weight_only.py:
an explicit --format; under auto the fastest form timed on the first plan, then the exact math, MatMulNBits at
fp32 compute, if the target is out of that form's reach), from weights quantized once each (Quantized caches
them by key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from onnx import ModelProto

from qcli.core.config import WeightFormat
from qcli.core.plan import Action, NodeDecision, QuantPlan, Reason
from qcli.passes.blockwise import apply_weight_only
from qcli.passes.nbits import FP32
from qcli.passes.weight_only import Key, key_of, quantize_plan, weight_errors
from qcli.weights import BlockWeight, WeightError, WeightOptions, WeightStats

UNITS = (Action.INT4_WEIGHT, Action.INT8_WEIGHT)  # the weight ops the search may change
WIDER = {"int4": "int8", "uint4": "uint8"}


def promoted(plan: QuantPlan, why: dict[str, Reason]) -> QuantPlan:
    """The plan with the nodes in `why` one step more precise: int4 blocks -> int8 blocks, int8 -> float."""
    weights = {w.node: w for w in plan.weights}
    nodes, kept = [], []
    for d in plan.nodes:
        r, w = why.get(d.node), weights.get(d.node)
        if r is None or w is None or d.action not in UNITS:
            nodes.append(d)
            if w is not None:
                kept.append(w)
        elif w.qtype in WIDER:
            nodes.append(NodeDecision(d.node, d.op_type, Action.INT8_WEIGHT, Reason(r.kind, {**r.details, "bits": 8})))
            kept.append(replace(w, qtype=WIDER[w.qtype]))
        else:
            nodes.append(NodeDecision(d.node, d.op_type, Action.FLOAT, r))
    return replace(plan, nodes=nodes, weights=kept, decisions=dict(plan.decisions), notes=list(plan.notes))


def sizes(model: ModelProto, plan: QuantPlan) -> dict[str, float]:
    """Node -> elements of the weight it reads (what raising it costs in bytes, up to a factor)."""
    dims = {t.name: t.dims for t in model.graph.initializer}
    return {w.node: float(np.prod(dims[w.tensor])) for w in plan.weights if w.tensor in dims}


class Quantized:
    """Every plan's weights, each key (tensor, bits, ...) quantized once with the run's algorithm, statistics
    and options."""

    def __init__(self, stats: dict[str, WeightStats] | None, options: WeightOptions) -> None:
        self.stats, self.options = stats, options
        self.cache: dict[Key, BlockWeight] = {}
        self.measured: dict[Key, WeightError] = {}

    def settle(self, model: ModelProto, plan: QuantPlan, advance: Callable[[], None] = lambda: None) -> None:
        """`plan`'s weights quantized and their errors measured (with the statistics of their inputs), then
        everything else let go: the other keys the search tried, and the statistics."""
        quantized = self.of(model, plan, advance)
        self.measured = weight_errors(model, quantized, self.stats)
        self.cache, self.stats = quantized, None

    def errors(self, plan: QuantPlan) -> dict[str, dict]:
        """Per weight tensor `plan` still quantizes, its error as settle() measured it (the report's figures)."""
        kept = {w.tensor for w in plan.weights}
        return {key[0]: e.to_dict() for key, e in self.measured.items() if key[0] in kept}

    def of(
        self, model: ModelProto, plan: QuantPlan, advance: Callable[[], None] = lambda: None
    ) -> dict[Key, BlockWeight]:
        """The quantized weights `plan` writes (those not yet in the cache quantized now, `advance` after each)."""
        self.cache.update(quantize_plan(model, plan, set(self.cache), self.stats, self.options, advance))
        nodes = {n.name: n for n in model.graph.node}
        keys = {key_of(nodes[w.node], w) for w in plan.weights if w.node in nodes}
        return {k: self.cache[k] for k in keys}

    def writer(
        self,
        weight_format: WeightFormat | None = None,
        accuracy_level: int | None = None,
        tables: WeightFormat | None = None,
    ) -> Callable[[ModelProto, QuantPlan], ModelProto]:
        """Plans written in one form (trials.Apply): the one given, else the plan's own decision."""

        def write(model: ModelProto, plan: QuantPlan) -> ModelProto:
            quantized = self.of(model, plan)
            return apply_weight_only(model, plan, False, weight_format, accuracy_level, quantized, tables)

        return write

    def write_exact(self, model: ModelProto, plan: QuantPlan) -> ModelProto:
        """The plan as MatMulNBits with fp32 compute: the exact math of its quantized weights."""
        return self.writer(WeightFormat.ORT, FP32)(model, plan)
