"""W8A8's range refit as an after-plan step: the decided plan (what is float and why, what runs on int8) with
its ranges from every calibration file, the held-aside ones included. The decisions were measured on those,
with ranges from the others; the written model's fidelity is then measured on files its ranges saw, and the
report says so."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from qcli.core.plan import QuantPlan
from qcli.steps.base import Context, Outcome, Part


class Refitter(Protocol):
    def refit(self, plan: QuantPlan) -> tuple[QuantPlan, dict] | None:
        """The plan's decisions with the ranges from every file, and its calibration record; None where no
        file was added."""


@dataclass(frozen=True)
class RefitStep:
    refitter: Refitter
    name: str = "range refit"
    dry_run: bool = True  # the plan --dry-run shows is the one that would be written

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        refitted = self.refitter.refit(plan)
        if refitted is None:
            return Outcome(plan)
        new, calibration = refitted
        new = replace(new, notes=plan.notes, warnings=plan.warnings)
        held = len(calibration["decided_with"]["measured_on"])
        note = (
            f"ranges from all {calibration['batches']} calibration files; the decisions were measured on the "
            f"{held} held aside, with ranges from the other {calibration['decided_with']['batches']}"
        )
        fid = replace(ctx.fid, desc=f"{ctx.fid.desc}, then added to the ranges (pass --eval for unseen data)")
        return Outcome(new, Part({"calibration": calibration}, (note,)), fid=fid)
