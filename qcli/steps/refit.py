"""W8A8's range refit as an after-plan step, verified on the model it writes.

The decisions (what is float and why, what runs on int8) were measured on the held-aside calibration files,
with ranges from the others. The refit gives the same decisions ranges from every file, held ones included.
That model is measured on the held files beside the decided one, and written only where it does no worse
there (each held file's worst output, averaged in dB; within TOL_DB): a held file at another scale (a
preprocessing slip, an over-exposed camera) widens every range it joins and can ruin all the other files.
Otherwise the decided plan is written, and its fidelity figures stay figures on data its ranges never saw.
Both measurements are in the report (`verified`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from qcli.core.plan import QuantPlan
from qcli.io.feeds import FidelityData
from qcli.measure.evaluate import OutputFidelity
from qcli.steps.base import Context, Outcome, Part
from qcli.steps.trials import Apply, trials, typical_sqnr, w8a8, worst_sqnr

TOL_DB = 0.1  # the refit is kept unless the held files' worst output (mean dB) loses more
WARN_DB = 3.0  # a loss this large is a warning (a held file unlike the others), a smaller one a note


class Refitter(Protocol):
    def refit(self, plan: QuantPlan) -> tuple[QuantPlan, dict] | None:
        """The plan's decisions with the ranges from every file, and its calibration record; None where no
        file was added."""


def _figures(fidelity: list[OutputFidelity]) -> dict:
    return {
        "worst_sqnr_db": round(worst_sqnr(fidelity), 2),
        "mean_file_worst_sqnr_db": round(typical_sqnr(fidelity), 2),
    }


@dataclass(frozen=True)
class RefitStep:
    refitter: Refitter
    held: FidelityData | None = None  # every held-aside file: the refit is verified on them (None: it is not)
    apply: Apply = w8a8
    name: str = "range refit"
    dry_run: bool = True  # under --dry-run it refits without measuring: the plan shown is the refitted one

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        refitted = self.refitter.refit(plan)
        if refitted is None:
            return Outcome(plan)
        new, calibration = refitted
        new = replace(new, notes=plan.notes, warnings=plan.warnings)
        held, fitted = (len(calibration["decided_with"].get(k, [])) for k in ("measured_on", "and_fitted"))
        other = calibration["decided_with"]["batches"]
        beside = f" and {fitted} of the other {other}" if fitted else ""
        note = (
            f"ranges from all {calibration['batches']} calibration files; the decisions were measured on the "
            f"{held} held aside{beside}, with ranges from {'those' if fitted else 'the other'} {other}"
        )
        joined = ctx.fid  # fidelity measured on the held files (no --eval): they joined the ranges
        if self.held is None or ctx.fid.items == self.held.items:
            joined = replace(ctx.fid, desc=f"{ctx.fid.desc}, then added to the ranges (pass --eval for unseen data)")
        if ctx.dry_run or self.held is None or self.held.src is None or not new.quantizes():  # float: no ranges used
            return Outcome(new, Part({"calibration": calibration}, (note,)), fid=joined)
        advance = ctx.progress("range refit (verified)", 2)
        with trials(ctx.model, ctx.reference, self.held, advance, self.apply) as t:
            decided, refit = t.measure(plan), t.measure(new)
        kept = typical_sqnr(refit) >= typical_sqnr(decided) - TOL_DB
        verified = {
            "on": self.held.desc,
            "decided": _figures(decided),
            "refit": _figures(refit),
            "written": "refit" if kept else "decided",
            "tolerance_db": TOL_DB,
        }
        if kept:
            return Outcome(new, Part({"calibration": calibration, "verified": verified}, (note,)), fid=joined)
        loss = typical_sqnr(decided) - typical_sqnr(refit)
        text = (
            f"range refit undone: with the {held} held-aside file(s) added to the ranges, the held files' "
            f"worst output measures {typical_sqnr(refit):.1f} dB, against {typical_sqnr(decided):.1f} dB with "
            f"the ranges from the other {calibration['decided_with']['batches']}: the model written keeps those"
        )
        if loss < WARN_DB:
            return Outcome(plan, Part({"verified": verified}, (text,)))
        why = "; a held file unlike the others (at another scale, say) widens every range it joins"
        return Outcome(plan, Part({"verified": verified}, warnings=(text + why,)))
