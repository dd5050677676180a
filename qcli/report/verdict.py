"""The verdict on the model written, from what was measured on it: no quantized model leaves qcli looking like a
success when its outputs are far from FP32's or when nothing in it was quantized.

    ok              measured, at or above the floors (or the user's own accuracy target decides)
    low-fidelity    the worst output under FLOOR_DB, or a class-score output's top-1 agreement under
                    FLOOR_AGREEMENT, on the data fidelity was measured on
    not-quantized   the model written computes in float (nothing was quantized, or an accuracy target was met
                    only by keeping everything float)
    unmeasured      no data: fidelity was not measured

Each status but ok and unmeasured comes with one line, the same on every run of the same command: it leads the
report's warnings, `quantize` prints it unwrapped on stderr, and `--strict` makes it exit 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from qcli.core.plan import QuantPlan
from qcli.report.report import Report

FLOOR_DB = 20.0  # worst output SQNR against FP32
FLOOR_AGREEMENT = 0.97  # top-1 agreement of a class-score output
SPREAD_DB = 1.0  # no layer back to float alone gained this much: the output's noise comes from many layers


class Status(str, Enum):
    OK = "ok"
    LOW_FIDELITY = "low-fidelity"
    NOT_QUANTIZED = "not-quantized"
    UNMEASURED = "unmeasured"


@dataclass(frozen=True)
class Verdict:
    status: Status
    line: str | None = None  # what the user should not miss (None: nothing to say)

    @property
    def failed(self) -> bool:
        """What --strict fails on."""
        return self.status in (Status.LOW_FIDELITY, Status.NOT_QUANTIZED)


def verdict(report: Report, plan: QuantPlan, targeted: bool) -> Verdict:
    """`targeted`: the user gave an accuracy target, which then decides what is enough (a target missed is a
    gate of its own)."""
    if not plan.quantizes():
        if report.target and report.target.get("met"):
            line = "the accuracy target was met only by keeping everything float: the model written computes in float"
        else:  # the plan's warnings say why, where the planner knows
            line = "the model written computes in float: no weight or activation in it is quantized"
        return Verdict(Status.NOT_QUANTIZED, line)
    if not report.fidelity:
        return Verdict(Status.UNMEASURED)
    if targeted:
        return Verdict(Status.OK)
    on = f"on {report.fidelity_data}" if report.fidelity_data else "on the data given"
    worst = min(report.fidelity, key=lambda f: f.sqnr_db)
    scored = [f for f in report.fidelity if f.top1_agreement is not None]
    flips = min(scored, key=lambda f: f.top1_agreement) if scored else None
    if worst.sqnr_db < FLOOR_DB:
        found = f"worst output {worst.name} {worst.sqnr_db:.1f} dB {on}, below the {FLOOR_DB:g} dB floor"
    elif flips is not None and flips.top1_agreement < FLOOR_AGREEMENT:
        found = (
            f"output {flips.name} keeps its top-1 class on {flips.top1_agreement:.1%} of rows {on}, below the "
            f"{FLOOR_AGREEMENT:.0%} floor"
        )
    else:
        return Verdict(Status.OK)
    remedy = f"try --min-sqnr {FLOOR_DB:g} (the fewest layers made more precise until every output reaches it)"
    return Verdict(Status.LOW_FIDELITY, f"{found}; {remedy}{_guard_measured(report.guard)}")


def _guard_measured(guard: dict | None) -> str:
    """What the accuracy guard already measured of that remedy, where it ran: the most one more layer back to
    float gained (each layer that gains a large share is float already), so the user knows whether a few
    layers or many stand between the model and the floor."""
    kept = set((guard or {}).get("kept_float") or [])  # float already: not one more
    tried = [c for c in (guard or {}).get("checked") or [] if not kept & set(c["nodes"])]
    if not tried:
        return ""
    best = max(tried, key=lambda c: c["gain_db"])
    spread = ": the loss is spread over many layers" if best["gain_db"] < SPREAD_DB else ""
    return (
        f"; the accuracy guard measured at most {best['gain_db']:+.1f} dB from one more layer back to float "
        f"({len(tried)} tried, {', '.join(best['nodes'])} the best){spread}"
    )
