"""The range refit as a step, with a stand-in refitter: what it keeps of the plan it is given, what it says, and
the fidelity data's description it changes (the held files joined the ranges)."""

from pathlib import Path

from qcli.core.plan import QuantPlan
from qcli.core.progress import no_progress
from qcli.io.feeds import FidelityData
from qcli.steps.base import Context, run
from qcli.steps.refit import RefitStep


class _Refitter:
    def __init__(self, result):
        self.result, self.seen = result, []

    def refit(self, plan):
        self.seen.append(plan)
        return self.result


def _ctx() -> Context:
    fid = FidelityData(None, [Path("c4.npy")], "1 calibration file(s) held aside")
    return Context(None, Path("m.onnx"), fid, no_progress)


def test_the_refitted_plan_keeps_the_decided_plan_s_notes_and_warnings_and_says_what_it_did():
    decided = QuantPlan("w8a8", notes=["named 2 unnamed node(s)"], warnings=["--overrides entry 'x' matches nothing"])
    calibration = {"batches": 5, "decided_with": {"batches": 4, "measured_on": ["c4.npy"]}}
    refitter = _Refitter((QuantPlan("w8a8", notes=["from the planner"]), calibration))
    ran = run([RefitStep(refitter)], decided, _ctx())
    assert refitter.seen == [decided]
    assert ran.plan.notes == decided.notes and ran.plan.warnings == decided.warnings
    (part,) = ran.parts
    assert part.fields == {"calibration": calibration}
    assert part.notes == (
        "ranges from all 5 calibration files; the decisions were measured on the 1 held aside, "
        "with ranges from the other 4",
    )
    assert ran.fid.desc == "1 calibration file(s) held aside, then added to the ranges (pass --eval for unseen data)"


def test_nothing_to_refit_leaves_plan_and_data_as_they_are_and_runs_under_dry_run():
    decided = QuantPlan("w8a8")
    ran = run([RefitStep(_Refitter(None))], decided, _ctx(), dry_run=True)
    assert ran.plan is decided and ran.parts[0].fields == {} and ran.fid == _ctx().fid
