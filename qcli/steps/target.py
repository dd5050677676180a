"""An accuracy target met automatically (`--min-sqnr`, `--max-top1-drop` on quantize): the fastest plan that
meets it, by returning the fewest layers to float.

The layers are ranked once, by the noise each adds at its output in the all-int8 model (measure/diagnose.py, on the
fidelity data). A unit is the int8 producer of a tensor that gains noise (or, for a tensor no int8 op
writes, its int8 readers). The search returns the top k units to float, re-planning the Q/DQ
placement each time (so nothing is left stranded between conversions), with k doubling until the target is
met on the fidelity data (never the calibration files where others exist), then bisecting down to the fewest.
The weight-only schemes search the same way with their own step (schemes/weight_only/target.py: 4-bit blocks -> 8-bit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnx import ModelProto

from qcli.core.plan import Action, QuantPlan, Reason, Why, reason
from qcli.io.feeds import FidelityData
from qcli.measure import evaluate
from qcli.measure.evaluate import OutputFidelity
from qcli.steps.base import Context, Outcome, Part, Replanner
from qcli.steps.trials import INT8_ACTIONS, Apply, trials, w8a8, worst_sqnr

LATENCY_RUNS = 10  # interleaved runs for the all-int8 model's latency, when layers had to go back


@dataclass(frozen=True)
class AccuracyTarget:
    min_sqnr: float | None = None  # dB, every output
    max_top1_drop: float | None = None  # percent of rows whose top-1 class changes, class-score outputs

    def __bool__(self) -> bool:
        return self.min_sqnr is not None or self.max_top1_drop is not None

    def shortfall(self, fidelity: list[OutputFidelity]) -> str | None:
        """None when met; else what is missing, for a person."""
        worst = min(fidelity, key=lambda f: f.sqnr_db)
        if self.min_sqnr is not None and worst.sqnr_db < self.min_sqnr:
            return f"output {worst.name} at {worst.sqnr_db:.2f} dB < --min-sqnr {self.min_sqnr:g}"
        agreements = [f for f in fidelity if f.top1_agreement is not None]
        if self.max_top1_drop is not None and agreements:
            f = min(agreements, key=lambda f: f.top1_agreement)
            drop = (1 - f.top1_agreement) * 100
            if drop > self.max_top1_drop:
                return f"output {f.name} top-1 changes on {drop:.2f}% of rows > --max-top1-drop {self.max_top1_drop:g}"
        return None


@dataclass
class Round:
    k: int  # units returned to float
    nodes: list[str]
    worst_sqnr_db: float
    met: bool

    def to_dict(self) -> dict:
        return {
            "units": self.k,
            "nodes_float": len(self.nodes),
            "worst_sqnr_db": round(self.worst_sqnr_db, 2),
            "met": self.met,
        }


@dataclass
class SearchResult:
    plan: QuantPlan
    met: bool
    returned: list[str] = field(default_factory=list)  # nodes returned to float, in rank order
    steps: list[Round] = field(default_factory=list)
    shortfall: str | None = None
    first_size: int = 0  # bytes of the all-int8 model, before any layer went back to float
    first_latency: float | None = None  # its latency ratio to FP32 (measured only when layers went back)
    relief: str = "float"  # what the returned nodes became: float, or (w4a16) 8-bit blocks
    measured_as: str = ""  # the form candidates were written in, where the scheme has several (weight-only)

    def to_dict(self, target: AccuracyTarget) -> dict:
        listed = "returned_to_float" if self.relief == "float" else "raised_to_8_bits"
        return {
            "min_sqnr": target.min_sqnr,
            "max_top1_drop": target.max_top1_drop,
            "met": self.met,
            "shortfall": self.shortfall,
            listed: self.returned,
            "steps": [s.to_dict() for s in self.steps],
            "all_int8_size_bytes": self.first_size,
            "all_int8_latency_ratio": self.first_latency,
        } | ({"measured_as": self.measured_as} if self.measured_as else {})


def search(
    model: ModelProto,
    reference: Path,
    first: QuantPlan,
    replan: Callable[[dict[str, Reason]], QuantPlan],
    target: AccuracyTarget,
    fid: FidelityData,
    advance: Callable[[], None] = lambda: None,
    apply: Apply = w8a8,
    units: tuple[Action, ...] = INT8_ACTIONS,
    relief: str = "float",
    cost: Callable[[str], float] | None = None,
) -> SearchResult:
    """Each fidelity measurement calls advance() (a step of the search). `apply` writes a plan into a model;
    `units` are the actions of the nodes the search may change; `relief` names what `replan` makes of them
    (the latency of the first model is measured only when they go back to float); with `cost` (node -> what
    changing it costs), the ranking puts the most noise per unit of cost first."""
    with trials(model, reference, fid, advance, apply, units, cost) as t:
        fidelity = t.measure(first, "all-int8.onnx")
        all_int8 = t.tmp / "all-int8.onnx"
        size = evaluate.file_size(all_int8)
        missing = target.shortfall(fidelity)
        if missing is None:
            steps = [Round(0, [], worst_sqnr(fidelity), True)]
            return SearchResult(first, True, steps=steps, first_size=size, relief=relief)
        lat = None
        if relief == "float":
            first_feed = fid.src.load(fid.items[0])
            lat = evaluate.latency(reference, all_int8, first_feed, runs=LATENCY_RUNS, candidate_ours=True).ratio
        ranked = t.rank_units(first)
        steps = [Round(0, [], worst_sqnr(fidelity), False)]
        tried: dict[int, tuple[QuantPlan, str | None, float]] = {0: (first, missing, worst_sqnr(fidelity))}

        def attempt(k: int) -> bool:
            nodes = [n for u in ranked[:k] for n in u]
            why = {n: reason(Why.TARGET, rank=i + 1) for i, n in enumerate(nodes)}
            plan = replan(why)
            fid_k = t.measure(plan)
            short = target.shortfall(fid_k)
            tried[k] = (plan, short, worst_sqnr(fid_k))
            steps.append(Round(k, nodes, worst_sqnr(fid_k), short is None))
            return short is None

        lo, hi, k = 0, None, 1
        while k <= len(ranked):
            if attempt(k):
                hi = k
                break
            lo, k = k, k * 2
        if hi is None and lo < len(ranked) and attempt(len(ranked)):
            hi = len(ranked)
        if hi is None:  # the ranking is exhausted: the most accurate plan tried
            best = max(tried, key=lambda j: tried[j][2])
            plan, short, _ = tried[best]
            returned = [n for u in ranked[:best] for n in u]
            return SearchResult(plan, False, returned, steps, short, size, lat, relief)
        while hi - lo > 1:  # fewest units that meet the target
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if attempt(mid) else (mid, hi)
        return SearchResult(tried[hi][0], True, [n for u in ranked[:hi] for n in u], steps, None, size, lat, relief)


@dataclass(frozen=True)
class TargetStep:
    """The accuracy target as an after-plan step: the fewest nodes back to float (`planner.replan`), each
    candidate written by `apply` and measured on the fidelity data."""

    planner: Replanner
    target: AccuracyTarget
    apply: Apply = w8a8
    name: str = "accuracy-target search"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        advance = ctx.progress("accuracy-target search (models tried)", None)
        found = search(ctx.model, ctx.reference, plan, self.planner.replan, self.target, ctx.fid, advance, self.apply)
        return searched(found, self.target, ctx.fid)


def searched(found: SearchResult, target: AccuracyTarget, fid: FidelityData) -> Outcome:
    """A search's plan, its part of the report, and its promise: the model written meets the target (the search
    may have measured another form of it), or, when no plan tried met it, the gate fails after writing the most
    accurate one."""
    warnings = ()
    if fid.src is not None and fid.in_sample:
        warnings = (
            "the accuracy target was checked on the calibration files themselves (fewer than 5, no --eval): "
            "give --eval data for a target that holds on unseen inputs",
        )

    def kept(report) -> str | None:
        if not found.met:
            where = "back to float" if found.relief == "float" else f"at {found.relief}"
            return (
                f"accuracy target not met ({found.shortfall}) with {len(found.returned)} node(s) {where}; "
                "wrote the most accurate model found"
            )
        late = target.shortfall(report.fidelity) if report.fidelity else None
        return f"accuracy target not met by the model written ({late})" if late else None

    return Outcome(found.plan, Part({"target": found.to_dict(target)}, warnings=warnings), promises=(kept,))
