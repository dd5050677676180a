"""The after-plan step contract: steps chained in order, each on the plan the one before returned; --dry-run
runs only the steps marked for it, and goes on past the others; parts, promises and a changed fidelity data
collected in order. Stand-in steps, no model."""

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qcli.core.plan import QuantPlan
from qcli.core.progress import no_progress
from qcli.io.feeds import FidelityData
from qcli.report.assemble import add
from qcli.report.report import Report
from qcli.steps.base import Context, Outcome, Part, run


@dataclass(frozen=True)
class Note:
    """Appends its name to the plan's notes (a new plan), with a part, a promise, optionally new data."""

    name: str
    dry_run: bool = False
    renames: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        seen = f"{self.name} saw {','.join(plan.notes) or '-'} on {ctx.fid.desc}"
        fid = replace(ctx.fid, desc=f"{ctx.fid.desc}+{self.name}") if self.renames else None
        promise = lambda report: f"{self.name} broken"  # noqa: E731
        return Outcome(replace(plan, notes=[*plan.notes, self.name]), Part({}, (seen,)), fid, (promise,))


def _ctx() -> Context:
    return Context(None, Path("m.onnx"), FidelityData(None, [], "data"), no_progress)


def test_steps_run_in_order_on_the_plan_and_data_the_one_before_returned():
    first = QuantPlan("w8a8")
    ran = run([Note("a"), Note("b", renames=True), Note("c")], first, _ctx())
    assert first.notes == [] and ran.plan.notes == ["a", "b", "c"]  # the plan given is left as it was
    assert [p.notes[0] for p in ran.parts] == ["a saw - on data", "b saw a on data", "c saw a,b on data+b"]
    assert ran.fid.desc == "data+b" and [p(None) for p in ran.promises] == ["a broken", "b broken", "c broken"]


def test_dry_run_skips_the_steps_that_measure_and_goes_on_past_them():
    steps = [Note("measures"), Note("cheap", dry_run=True), Note("measures too"), Note("also cheap", dry_run=True)]
    assert run(steps, QuantPlan("w8a8"), _ctx(), dry_run=True).plan.notes == ["cheap", "also cheap"]
    assert run(steps, QuantPlan("w8a8"), _ctx()).plan.notes == [s.name for s in steps]  # not a dry run by default


def test_a_part_adds_its_fields_notes_and_warnings_and_may_name_only_report_fields():
    report = Report("quantize", "m.onnx", "q.onnx", notes=["first"], warnings=["w0"])
    add(report, Part({"guard": {"kept_float": ["conv"]}}, ("n1",), ("w1",)))
    assert report.guard == {"kept_float": ["conv"]} and report.notes == ["first", "n1"]
    assert report.warnings == ["w0", "w1"]
    with pytest.raises(AttributeError, match="a report part names no report field: gaurd"):
        add(report, Part({"gaurd": {}}))
