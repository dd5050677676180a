"""The last W8A8 step: channel scaling taken back where the plan leaves its tensor float (passes/unscale.py).
A scaling Mul is there for the tensor it equalizes; once the guard, placement or target have decided, a Mul
beside float layers only costs a float pass (the PicoDet-style net written float read 1.13x FP32 with its 83).
The plan loses those Muls' decisions; the rewrite takes the edits back (W8A8.rewrite), replayed plans alike."""

from __future__ import annotations

from dataclasses import dataclass, replace

from qcli.core.plan import QuantPlan
from qcli.passes.unscale import ScalingEdit, idle
from qcli.steps.base import Context, Outcome, Part


@dataclass(frozen=True)
class UnscaleStep:
    edits: tuple[ScalingEdit, ...]
    name: str = "channel scaling taken back"
    dry_run: bool = True  # measures nothing

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        undone = idle(list(self.edits), plan)
        if not undone:
            return Outcome(plan)
        muls = {e.mul for e in undone}
        note = (
            f"channel scaling taken back at {len(undone)} of {len(self.edits)} tensor(s) the model written leaves "
            "float (its Mul would only cost time)"
        )
        nodes = [d for d in plan.nodes if d.node not in muls]
        return Outcome(replace(plan, nodes=nodes, notes=list(plan.notes)), Part({}, (note,)))
