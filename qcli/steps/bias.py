"""Bias correction, verified: the plan's corrections (calibration/bias.py: each int8 Conv/Gemm's mean output
error from rounding its weights, folded into its bias) are on every plan the steps before measured; this last
step measures the model with and without them on the held files and keeps them unless the model without
measures better (each file's worst output averaged in dB, or the pooled worst output by more than TOL_DB).
The report's `bias_correction` says which, with both figures.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from qcli.core.plan import QuantPlan
from qcli.io.feeds import FidelityData
from qcli.steps.base import Context, Outcome, Part
from qcli.steps.trials import Apply, trials, typical_sqnr, w8a8, worst_sqnr

TOL_DB = 0.1


@dataclass(frozen=True)
class BiasStep:
    """`check`: the held-aside files, or the data an accuracy target is measured on."""

    check: FidelityData | None
    apply: Apply = w8a8
    name: str = "bias correction"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        if not plan.bias_corrections or self.check is None or self.check.src is None:
            return Outcome(plan)
        plain = replace(plan, bias_corrections={})
        advance = ctx.progress("bias correction (verified)", 2)
        with trials(ctx.model, ctx.reference, self.check, advance, self.apply) as t:
            before, after = t.measure(plain), t.measure(plan)
        gain, pooled = typical_sqnr(after) - typical_sqnr(before), worst_sqnr(after) - worst_sqnr(before)
        kept = gain >= 0 and pooled >= -TOL_DB
        largest = max(plan.bias_corrections, key=lambda k: max(map(abs, plan.bias_corrections[k])))
        record = {
            "applied": kept,
            "layers": len(plan.bias_corrections),
            "checked_on": f"{self.check.desc}, with the ranges of the plan written",
            "without": {
                "worst_sqnr_db": round(worst_sqnr(before), 2),
                "mean_file_worst_sqnr_db": round(typical_sqnr(before), 2),
            },
            "with": {
                "worst_sqnr_db": round(worst_sqnr(after), 2),
                "mean_file_worst_sqnr_db": round(typical_sqnr(after), 2),
            },
            "largest": {"node": largest, "max_abs_shift": max(map(abs, plan.bias_corrections[largest]))},
        }
        note = (
            f"bias correction {'applied' if kept else 'not applied'}: {len(plan.bias_corrections)} int8 Conv/Gemm "
            f"bias(es) shifted by their weights' mean rounding error; on {self.check.desc} the files' worst "
            f"output {typical_sqnr(before):.1f} -> {typical_sqnr(after):.1f} dB (mean), pooled "
            f"{worst_sqnr(before):.1f} -> {worst_sqnr(after):.1f} dB"
        )
        return Outcome(plan if kept else plain, Part({"bias_correction": record}, (note,)))
