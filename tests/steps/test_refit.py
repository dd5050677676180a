"""The range refit as a step, with a stand-in refitter: what it keeps of the plan it is given, what it says, and
the fidelity data's description it changes (the held files joined the ranges)."""

from pathlib import Path

import pytest

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


def _measured(monkeypatch, figures: dict):
    """The refit's check with a stand-in measurement: each plan's per-file worst output from `figures`."""
    from contextlib import contextmanager

    from qcli.measure.evaluate import OutputFidelity
    from qcli.steps import refit

    class _Trials:
        def measure(self, plan):
            per_file = figures[plan.scheme]
            return [OutputFidelity("y", min(per_file), 1.0, 0.0, None, per_file)]

    @contextmanager
    def stand_in(*a, **k):
        yield _Trials()

    monkeypatch.setattr(refit, "trials", stand_in)


@pytest.mark.parametrize(
    ("refit_db", "written", "said"),
    [(19.91, "refit", "note"), (19.89, "decided", "note"), (16.99, "decided", "warning"), (17.01, "decided", "note")],
)
def test_the_refit_is_written_unless_the_held_files_lose_more_than_the_tolerance(monkeypatch, refit_db, written, said):
    """Decided plan: held files at 5, 25 and 30 dB (mean 20). A refitted plan that loses less than the tolerance
    (0.1 dB) of that mean is written, whatever its pooled figure; below it the decided plan is, with a note, and
    a warning from a 3 dB loss."""
    _measured(monkeypatch, {"decided": (5.0, 25.0, 30.0), "refit": (3 * refit_db - 40.0, 40.0, 0.0)})
    calibration = {"batches": 15, "decided_with": {"batches": 12, "measured_on": ["c12.npy", "c13.npy", "c14.npy"]}}
    held = FidelityData("src", [Path(f"c{i}.npy") for i in (12, 13, 14)], "3 calibration file(s) held aside")
    ctx = Context(None, Path("m.onnx"), held, no_progress)
    decided = QuantPlan("decided", activations={"x": None})  # stand-ins that quantize something
    ran = run([RefitStep(_Refitter((QuantPlan("refit", activations={"x": None}), calibration)), held)], decided, ctx)
    (part,) = ran.parts
    v = part.fields["verified"]
    assert v["written"] == written and ran.plan.scheme == written
    assert v["decided"] == {"worst_sqnr_db": 5.0, "mean_file_worst_sqnr_db": 20.0}
    assert v["refit"] == {"worst_sqnr_db": 0.0, "mean_file_worst_sqnr_db": pytest.approx(refit_db)}
    assert ("calibration" in part.fields) == (written == "refit")
    if written == "refit":
        assert "then added to the ranges" in ran.fid.desc
        return
    assert ran.fid == held  # the figures stay on data the ranges never saw
    text = part.warnings if said == "warning" else part.notes
    assert len(text) == 1 and text[0].startswith("range refit undone: with the 3 held-aside file(s) added")
    assert (part.notes, part.warnings)[said == "note"] == ()


def test_under_dry_run_the_refit_is_not_measured(monkeypatch):
    _measured(monkeypatch, {})  # a measurement would fail: no figures
    calibration = {"batches": 5, "decided_with": {"batches": 4, "measured_on": ["c4.npy"]}}
    held = _ctx().fid
    ran = run([RefitStep(_Refitter((QuantPlan("refit"), calibration)), held)], QuantPlan("decided"), _ctx(), True)
    assert ran.plan.scheme == "refit" and "verified" not in ran.parts[0].fields


def test_a_plan_that_quantizes_nothing_is_not_verified(monkeypatch):
    """Written float (placement moved every layer back), the ranges are unused: no measurement, no row saying
    a refitted model was written."""
    _measured(monkeypatch, {})  # a measurement would fail: no figures
    calibration = {"batches": 15, "decided_with": {"batches": 12, "measured_on": ["c12.npy", "c13.npy", "c14.npy"]}}
    held = FidelityData("src", [Path(f"c{i}.npy") for i in (12, 13, 14)], "3 calibration file(s) held aside")
    ctx = Context(None, Path("m.onnx"), held, no_progress)
    ran = run([RefitStep(_Refitter((QuantPlan("refit"), calibration)), held)], QuantPlan("decided"), ctx)
    (part,) = ran.parts
    assert "verified" not in part.fields and ran.plan.scheme == "refit"
