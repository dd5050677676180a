"""Measured placement for the weight-only schemes (`--placement measured` under `--objective latency`, after
`--format auto` chose a form): where that form still runs slower than FP32 on this CPU, time the weight ops
back to float one group at a time (weights of the same shape, the smallest first: there a kernel's fixed cost
outweighs the bytes it saves) and keep float each group that makes the model at least MARGIN faster. If the best
plan is then still clearly slower than FP32, no weight is quantized and the report says so in one line.
A weight going back to float only makes the model more exact, so an accuracy target met before still holds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from onnx import ModelProto

from . import model_io
from .placement import MARGIN, PlacementResult, Timed, ratio_of
from .plan import Action, NodeDecision, QuantPlan, Reason, Why, reason

Write = Callable[[ModelProto, QuantPlan], ModelProto]


def floated(plan: QuantPlan, why: dict[str, Reason]) -> QuantPlan:
    """The plan with the weight ops in `why` float (their weights no longer quantized)."""
    nodes = [NodeDecision(d.node, d.op_type, Action.FLOAT, why[d.node]) if d.node in why else d for d in plan.nodes]
    weights = [w for w in plan.weights if w.node not in why]
    return replace(plan, nodes=nodes, weights=weights, decisions=dict(plan.decisions), notes=list(plan.notes))


def shape_groups(model: ModelProto, plan: QuantPlan) -> list[tuple[str, list[str]]]:
    """The plan's weight ops grouped by their weight's shape, the smallest weights first."""
    dims = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for w in plan.weights:
        by_shape.setdefault(dims.get(w.tensor, ()), []).append(w.node)
    ordered = sorted(by_shape.items(), key=lambda kv: (int(np.prod(kv[0])) if kv[0] else 0, kv[0]))
    return [(f"{len(nodes)} weight op(s) of shape {'x'.join(map(str, s)) or '?'}", nodes) for s, nodes in ordered]


def place_weights(
    model: ModelProto,
    plan: QuantPlan,
    reference: Path,
    feed: dict[str, np.ndarray],
    write: Write,
    advance: Callable[[], None] = lambda: None,
) -> PlacementResult:
    """The fastest plan of those tried, each written by `write` (the chosen form) and timed on `feed`."""
    with tempfile.TemporaryDirectory(prefix="qcli-weight-placement-") as tmp:

        def save(p: QuantPlan, name: str) -> Path:
            return model_io.save_for_session(write(model, p), Path(tmp), name)

        def time(a: Path, b: Path) -> float:
            r = ratio_of(a, b, feed)
            advance()
            return r

        best, best_path, kept, timed = plan, save(plan, "best.onnx"), {}, []
        for i, (label, nodes) in enumerate(shape_groups(model, plan)):
            probe = {n: reason(Why.MEASURED, group=label, ratio=0.0) for n in nodes}
            path = save(floated(best, probe), f"group{i}.onnx")  # a kept group's file stays the best plan's
            ratio = time(best_path, path)
            timed.append(Timed(label, nodes, ratio, ratio < 1 - MARGIN))
            if ratio < 1 - MARGIN:
                kept.update({n: reason(Why.MEASURED, group=label, ratio=ratio) for n in nodes})
                best, best_path = floated(plan, kept), path
        vs_fp32 = time(reference, best_path)
        if vs_fp32 < 1 + MARGIN:  # at FP32's speed or better: the smaller model is kept
            verdict = f"weight-only: {len(kept)} weight op(s) kept float after timing, the rest pay" if kept else ""
            return PlacementResult(best, vs_fp32, timed, verdict)
        every = {w.node: reason(Why.MEASURED, group="whole model", ratio=1 / vs_fp32) for w in best.weights}
        verdict = (
            f"no weight-only placement tried made this model faster than FP32 on this CPU (best {vs_fp32:.2f}x): "
            "written with its weights float; --objective size quantizes them anyway"
        )
        return PlacementResult(floated(plan, {**kept, **every}), 1.0, timed, verdict)
