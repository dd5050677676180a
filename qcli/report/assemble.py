"""The quantize report assembled from its parts: each after-plan step's part (steps/base.py: Report fields it
owns, notes, warnings) added in order, and the final plan described once."""

from __future__ import annotations

from qcli.core.config import QuantConfig, effective
from qcli.core.plan import Action, QuantPlan, Why
from qcli.report.report import Report
from qcli.steps.base import Part


def add(report: Report, part: Part) -> None:
    for name, value in part.fields.items():
        if not hasattr(report, name):
            raise AttributeError(f"a report part names no report field: {name}")
        setattr(report, name, value)
    report.notes += part.notes
    report.warnings += part.warnings


def describe(report: Report, config: QuantConfig, plan: QuantPlan) -> None:
    """The report's view of a plan: the plan itself, the effective config, the nodes kept float and why."""
    report.plan = plan.to_dict()
    report.decisions = plan.decisions
    report.config = effective(config, plan.decisions)
    every = list(plan.every())  # the If branches' and loop bodies' nodes by "<node>/<branch>/<name>"
    report.float_for_speed = [n for n, d in every if d.why in (Why.SPEED, Why.MEASURED)]
    report.float_for_accuracy = [
        n for n, d in every if d.why in (Why.ACCURACY, Why.TARGET) and d.action == Action.FLOAT
    ]
