"""The after-plan step contract: a step takes the plan and what it measures on, and returns a new plan plus its
part of the report. A scheme handler lists its steps in one place (`SchemeHandler.steps`); `run` chains them.

    plan ─► step 1 ─► plan' ─► step 2 ─► plan'' ...     each step: (plan, Context) -> Outcome(plan, Part)

No step edits the plan it is given or a shared job: a step that changes the plan returns a new one, and the
report is assembled once, from the parts, after the last step (pipeline.py). (The weight-only steps share one
memo, schemes/weight_only/target.Quantized, so that each weight is quantized once.) A step that makes a promise
about the model written (an accuracy target met) returns it as a `Promise`, checked on the written model's
measured report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from onnx import ModelProto

from qcli.core.plan import NO_PROMOTION, Promotion, QuantPlan, Reason
from qcli.core.progress import Progress
from qcli.io.feeds import FidelityData
from qcli.steps.trials import share_reference_outputs

# A check on the written model's measured report (report.Report, which sits above this layer): None when it
# holds, else what is wrong (the quantize gate's message).
Promise = Callable[[object], "str | None"]


@dataclass(frozen=True)
class Context:
    """What every step measures on; the same for all steps of a run."""

    model: ModelProto  # the float model, preprocessed (read, never edited)
    reference: Path  # the model fidelity and latency are measured against
    fid: FidelityData  # the data fidelity is measured on (no src: none given)
    progress: Progress
    ort_config: dict[str, str] | None = None
    dry_run: bool = False  # --dry-run: only the steps marked dry_run run, and they measure nothing


@dataclass(frozen=True)
class Part:
    """A step's part of the report: Report fields it owns (e.g. "guard", "placement"), notes and warnings."""

    fields: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    plan: QuantPlan
    part: Part = Part()
    fid: FidelityData | None = None  # set where the step changed what the fidelity data is (the range refit)
    promises: tuple[Promise, ...] = ()


class Replanner(Protocol):
    """A scheme's planner again, with some nodes more precise (float, or wider weights) and, for W8A8's
    measured placement, some nodes promoted to int8 beyond the static rule."""

    def replan(self, why: dict[str, Reason], promotion: Promotion = NO_PROMOTION) -> QuantPlan: ...


class Step(Protocol):
    name: str  # for --dry-run's note ("accuracy guard")
    dry_run: bool  # runs under --dry-run too (steps that measure models do not: it shows the plan before them)

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome: ...


@dataclass(frozen=True)
class Ran:
    """The steps' result: the last plan, every part in order, the data last measured on, their promises."""

    plan: QuantPlan
    parts: tuple[Part, ...]
    fid: FidelityData
    promises: tuple[Promise, ...]


def run(steps: Sequence[Step], plan: QuantPlan, ctx: Context, dry_run: bool = False) -> Ran:
    """The steps in order, each on the plan the one before returned (under dry_run only those marked so)."""
    parts: list[Part] = []
    promises: list[Promise] = []
    ctx = replace(ctx, dry_run=dry_run)
    with share_reference_outputs():  # each file the steps measure on runs through the float model once
        for step in steps:
            if dry_run and not step.dry_run:
                continue
            out = step.run(plan, ctx)
            plan = out.plan
            parts.append(out.part)
            promises += out.promises
            if out.fid is not None:
                ctx = replace(ctx, fid=out.fid)
    return Ran(plan, tuple(parts), ctx.fid, tuple(promises))
