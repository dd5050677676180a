"""Measured placement for the weight-only schemes (`--placement measured` under `--objective latency`, after
`--format auto` chose a form): where that form still runs slower than FP32 on this CPU, time the weight ops
back to float one group at a time (weights of the same shape, the smallest first: there a kernel's fixed cost
outweighs the bytes it saves) and keep float each group that makes the model at least MARGIN faster at its
slowest timing batch size (--timing-batch: int4 may pay at one size and not at another), in a first timing and
again over CONFIRM_RUNS runs (a float weight costs size; one short timing of a small model is mostly noise).
If the best plan is then still more than CLEAR slower than FP32 at a size, confirmed over CONFIRM_RUNS runs, no
weight is quantized and the report says so in one line; closer than that is level within one timing's spread
(measured on MiniLM at batch 8: 0.86-1.16x over six timings of the same pair), and the smaller model is kept
with a line saying so.
A weight going back to float only makes the model more exact, so an accuracy target met before still holds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from onnx import ModelProto

from qcli.core.plan import Action, NodeDecision, QuantPlan, Reason, Why, reason
from qcli.io import model_io
from qcli.schemes.weight_only.batches import TimingFeeds
from qcli.steps.placement import PlacementResult, Timed
from qcli.steps.timing import CLEAR, MARGIN, RUNS, ratio_of

Write = Callable[[ModelProto, QuantPlan], ModelProto]
CONFIRM_RUNS = 3 * RUNS  # a group's move to float, and the all-float verdict, are timed again over this many runs


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
    timing: TimingFeeds,
    write: Write,
    advance: Callable[[], None] = lambda: None,
    start: dict[int, float] | None = None,
) -> PlacementResult:
    """The fastest plan of those tried, each written by `write` (the chosen form) and timed at every size of
    `timing`; `start`: the plan's time over FP32's at each size (--format auto's timings), 1 where unknown.
    A plan is judged by its worst size: a group is kept float where that figure drops by MARGIN."""
    with tempfile.TemporaryDirectory(prefix="qcli-weight-placement-") as tmp:

        def save(p: QuantPlan, name: str) -> Path:
            return model_io.save_for_session(write(model, p), Path(tmp), name)

        def time(a: Path, b: Path, runs: int | None = None) -> dict[int, float]:
            out = {n: ratio_of(a, b, feed, runs=runs) for n, feed in timing.feeds}
            advance()
            return out

        est = {n: (start or {}).get(n, 1.0) for n in timing.sizes}  # the best plan's time over FP32's, estimated
        best, best_path, kept, timed = plan, save(plan, "best.onnx"), {}, []
        for i, (label, nodes) in enumerate(shape_groups(model, plan)):
            probe = {n: reason(Why.MEASURED, group=label, ratio=0.0) for n in nodes}
            path = save(floated(best, probe), f"group{i}.onnx")  # a kept group's file stays the best plan's
            after = {n: est[n] * r for n, r in time(best_path, path).items()}
            ratio = max(after.values()) / max(est.values())
            if ratio < 1 - MARGIN:  # weights going float cost size: a win is timed again over more runs first
                after = {n: est[n] * r for n, r in time(best_path, path, CONFIRM_RUNS).items()}
                ratio = max(after.values()) / max(est.values())
            timed.append(Timed(label, nodes, ratio, ratio < 1 - MARGIN))
            if ratio < 1 - MARGIN:
                kept.update({n: reason(Why.MEASURED, group=label, ratio=ratio) for n in nodes})
                best, best_path, est = floated(plan, kept), path, after
        measured = time(reference, best_path)
        for n, feed in timing.feeds:  # giving every weight up is costly: a clear slowdown is confirmed first
            if measured[n] >= 1 + CLEAR:
                measured[n] = ratio_of(reference, best_path, feed, runs=CONFIRM_RUNS)
        worst = max(measured, key=measured.get)
        vs_fp32 = measured[worst]
        at = f" at batch {worst}" if len(measured) > 1 else ""
        if vs_fp32 < 1 + CLEAR:  # faster, or level within one timing's spread: the smaller model is kept
            verdict = f"weight-only: {len(kept)} weight op(s) kept float after timing, the rest pay" if kept else ""
            if vs_fp32 >= 1 + MARGIN:
                sizes = ", ".join(f"{r:.2f}x at batch {n}" for n, r in measured.items())
                verdict = (
                    f"weight-only: {vs_fp32:.2f}x FP32{at} on this CPU, within the {CLEAR:.0%} one timing spreads "
                    f"({sizes}): the weights stay quantized" + (f"; {verdict}" if verdict else "")
                )
            return PlacementResult(best, vs_fp32, timed, verdict)
        every = {w.node: reason(Why.MEASURED, group="whole model", ratio=1 / vs_fp32) for w in best.weights}
        verdict = (
            f"no weight-only placement tried made this model faster than FP32 on this CPU (best {vs_fp32:.2f}x{at}, "
            f"confirmed over {CONFIRM_RUNS} runs): written with its weights float; --objective size quantizes them "
            "anyway"
        )
        return PlacementResult(floated(plan, {**kept, **every}), 1.0, timed, verdict)
