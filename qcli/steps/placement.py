"""Placement by measurement (`--placement measured`, the default): where the static cost rule is unsure,
time the alternatives on this CPU and keep the faster; and never write a model slower than FP32 by choice.

The static plan (schemes/w8a8/planner.py: regions, MACs per converted element >= --min-macs) is the starting point.
The groups of int8 nodes it is least sure about are each timed back to float against the best plan so far,
interleaved in one process on the same input (thread spinning off), and kept float when that is at least
MARGIN faster:
  - the int8 anchors under NEAR x the --min-macs threshold (their conversions cost about what they win);
  - the ops run by QLinear kernels without multiply-accumulates (Add, Mul, Sigmoid, Concat, pools: whether
    the kernel beats float plus conversions depends on the CPU and the shapes), all together, then by type.
Then the other direction: what the static rule keeps float that could run on int8 (the anchors its cost rule
dropped, and the ops of ops.TRIAL: Softmax, Transpose) is timed on int8 against the best plan, all together,
then the trial ops alone, then the anchors alone; the first that is at least MARGIN faster is kept if the accuracy
guard would let it be (worst output at or above its QUIET_DB, or less than its SHARE of noise added) and an
accuracy target is still met. Parts of a group are not timed when the whole group was clearly slower.
Then the best plan is timed against FP32. Not faster: every anchor under HEAVY x the threshold and every
such op type go float, timed again; still not faster: nothing is quantized, and the report says so in one
line. `--objective size` skips all of this (every candidate is quantized); `--placement static` keeps the
static plan, deterministic for CI.
Accuracy: nodes the guard or the target returned to float stay float; nodes go to int8 only within the guard's
measure (above), so its choice still holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnx import ModelProto

from qcli.core.graph import GraphIndex
from qcli.core.ops import ANCHORS, QLINEAR, TRIAL
from qcli.core.plan import NO_PROMOTION, Action, Promotion, QuantPlan, Why, reason
from qcli.io import model_io
from qcli.io.feeds import FidelityData
from qcli.io.session import OpenSessions, Session
from qcli.steps.base import Context, Outcome, Part, Replanner
from qcli.steps.guard import QUIET_DB, SHARE, gain_for
from qcli.steps.target import AccuracyTarget
from qcli.steps.timing import CLEAR, MARGIN, fits_together, ratio_of
from qcli.steps.trials import Apply, Trials, trials, typical_sqnr, w8a8, worst_sqnr

NEAR, HEAVY = 4.0, 16.0  # multiples of the --min-macs threshold
MAX_GROUPS = 5
INT8 = (Action.INT8, Action.INT8_OUT_FLOAT)


@dataclass
class Timed:
    group: str
    nodes: list[str]
    ratio: float  # time with the group moved (to float, or to int8) / time of the best plan before it
    kept: bool  # the move was kept
    to: str = "float"
    sqnr_db: tuple[float, float] | None = None  # to int8: the worst output before and after, where measured

    def to_dict(self) -> dict:
        out = {"group": self.group, "nodes": len(self.nodes), "to": self.to, "ratio": round(self.ratio, 3)}
        if self.sqnr_db:
            out["worst_sqnr_db"] = [round(x, 2) for x in self.sqnr_db]
        return {**out, "kept": self.kept}


@dataclass
class PlacementResult:
    plan: QuantPlan
    vs_fp32: float  # latency ratio of the chosen plan to FP32, as timed here
    timed: list[Timed] = field(default_factory=list)
    verdict: str = ""
    timed_in_turn: int = 0  # timings made one model after the other (two sessions would break the memory bound)
    promotion: Promotion = NO_PROMOTION  # what went to int8 beyond the static rule

    def to_dict(self) -> dict:
        return {
            "mode": "measured",
            "vs_fp32": round(self.vs_fp32, 3),
            "timed": [t.to_dict() for t in self.timed],
            "verdict": self.verdict,
            "timed_in_turn": self.timed_in_turn,
            "int8_beyond_static": sorted(
                self.promotion.ops | {n for n in self.promotion.anchors if self.plan.decision(n).action in INT8}
            ),
        }


def groups(
    plan: QuantPlan, threshold: float, near: float = NEAR, limit: int | None = None
) -> list[tuple[str, list[str], bool]]:
    """The int8 node groups the static rule is least sure about, in the order they are tried: (label, nodes,
    part), where a part is a piece of the group before it (tried only when that group was not clearly slower)."""
    out = []
    under = near * threshold
    anchors = [n for n, r in plan.macs_per_conversion.items() if r < under]
    if anchors:
        out.append((f"{len(anchors)} int8 layer(s) under {under:g} MACs per converted element", anchors, False))
    elementwise: dict[str, list[str]] = {}
    for d in plan.nodes:
        if d.action in INT8 and d.op_type in QLINEAR and d.op_type not in ANCHORS:
            elementwise.setdefault(d.op_type, []).append(d.node)
    # All of them together first: one such op float between int8 neighbours still reads DequantizeLinear and
    # feeds QuantizeLinear, which onnxruntime fuses into the same int8 kernel (SiLU: Sigmoid and Mul together).
    every = [n for nodes in elementwise.values() for n in nodes]
    whole = len(elementwise) > 1
    if whole:
        out.append((f"int8 elementwise ops ({len(every)})", every, False))
    for op, nodes in sorted(elementwise.items(), key=lambda kv: -len(kv[1])):
        out.append((f"int8 {op} ({len(nodes)})", nodes, whole))
    return out[:limit]


def promotions(model: ModelProto, plan: QuantPlan) -> list[tuple[str, Promotion, bool]]:
    """What the static rule keeps float that could run on int8, in the order it is tried: all together, then the
    trial ops alone, then the anchors alone (parts, as in groups())."""
    anchors = frozenset(d.node for d in plan.nodes if d.why == Why.SPEED)  # dropped by the cost rule
    ops = frozenset(n.op_type for n in model.graph.node if n.op_type in TRIAL and n.domain in ("", "ai.onnx"))
    a = f"{len(anchors)} layer(s) the cost rule keeps float"
    o = f"{', '.join(sorted(ops))} on int8"
    both = bool(anchors and ops)
    out = [(f"{a}; {o}", Promotion(anchors, ops), False)] if both else []
    out += [(o, Promotion(ops=ops), both)] if ops else []
    return out + ([(a, Promotion(anchors=anchors), both)] if anchors else [])


def place(
    model: ModelProto,
    reference: Path,
    first: QuantPlan,
    replan: Callable[..., QuantPlan],
    threshold: float,
    data: FidelityData,
    advance: Callable[[], None] = lambda: None,
    target: AccuracyTarget | None = None,
    apply: Apply = w8a8,
) -> PlacementResult:
    """The fastest of the plans tried (each timing calls advance()). `replan(float_nodes, promotion)`: the plan
    again with these nodes float and this promotion; `target`: an accuracy target an int8 move must still meet."""
    # The best plan's session stays open from one timing to the next (a candidate kept becomes the best with
    # its session open already): one model loaded per timing, not two.
    with trials(model, reference, data, advance, apply) as t, OpenSessions(theirs=frozenset([reference])) as sessions:
        s = _Search(model, reference, first, replan, data.src.load(data.items[0]), advance, t, sessions)
        s.to_float(threshold)
        s.to_int8(target)
        return s.against_fp32(threshold)


class _Search:
    """One placement search's state: the best plan so far (and its file), the nodes timed back to float, the
    promotion kept, every move timed."""

    def __init__(self, model, reference: Path, first: QuantPlan, replan, feed: dict, advance, t: Trials, sessions):
        self.model, self.reference, self.replan, self.feed, self.advance = model, reference, replan, feed, advance
        self.t, self.sessions = t, sessions
        # Nodes an earlier step returned to float (accuracy guard, target) stay float in every plan tried here.
        self.fixed = {d.node: d.reason for d in first.nodes if d.why in (Why.ACCURACY, Why.TARGET)}
        self.held = model_io.model_bytes(model)  # the float graph stays in memory while the sessions run
        self.in_turn: list[bool] = []  # the timings made one model after the other
        self.best, self.best_path, self.floated = first, t.write(first, "best.onnx"), {}
        self.timed: list[Timed] = []
        self.wholes: list[Timed] = []  # the groups timed that are not parts of another
        self.promotion = NO_PROMOTION

    def time(self, a: Path, b: Path) -> float:
        alone = not fits_together(self.held, a, b, self.reference)
        if alone:  # one session at a time from now on
            self.sessions.close(disable=True)
        r = ratio_of(a, b, self.feed, in_turn=True) if alone else ratio_of(*self.sessions(a, b), self.feed)
        self.in_turn.append(alone)
        self.advance()
        return r

    def settled(self, part: bool) -> bool:
        """The whole this part belongs to was clearly slower: so are its parts."""
        return part and bool(self.wholes) and self.wholes[-1].ratio >= 1 + CLEAR

    def record(self, move: Timed, part: bool) -> Timed:
        self.timed.append(move)
        self.wholes.extend([] if part else [move])
        return move

    def again(self, more: dict | None = None, promotion: Promotion | None = None) -> QuantPlan:
        """The plan with the fixed and floated nodes float, and `more`; the promotion kept unless one is given."""
        promotion = self.promotion if promotion is None else promotion
        return self.replan({**self.fixed, **self.floated, **(more or {})}, promotion)

    def to_float(self, threshold: float) -> None:
        """The groups the static rule is least sure about, each timed back to float against the best plan."""
        for i, (label, nodes, part) in enumerate(groups(self.best, threshold, limit=MAX_GROUPS)):
            nodes = [n for n in nodes if n not in self.floated]
            if not nodes or self.settled(part):
                continue
            cand = self.again({n: reason(Why.MEASURED, group=label, ratio=0.0) for n in nodes})
            path = self.t.write(cand, f"group{i}.onnx")  # a kept group's file stays the best plan's
            ratio = self.time(self.best_path, path)
            keep = ratio < 1 - MARGIN
            self.record(Timed(label, nodes, ratio, keep), part)
            if keep:  # the same plan, with the measured ratio in its reasons
                self.floated.update({n: reason(Why.MEASURED, group=label, ratio=ratio) for n in nodes})
                self.best, self.best_path = self.again(), path

    def to_int8(self, target: AccuracyTarget | None) -> None:
        """What the static rule keeps float, timed on int8: the first promotion that pays and keeps the accuracy."""
        for i, (label, promo, part) in enumerate(promotions(self.model, self.best)):
            if self.settled(part):
                continue
            cand = self.again(promotion=promo)
            path = self.t.write(cand, f"int8_{i}.onnx")
            ratio = self.time(self.best_path, path)
            move = self.record(Timed(label, sorted(promo.anchors | promo.ops), ratio, False, "int8"), part)
            if ratio < 1 - MARGIN:
                move.kept, move.sqnr_db = _accurate_enough(self.t, *self.sessions(self.best_path, path), target)
            if not move.kept:
                continue
            self.promotion, self.best, self.best_path = promo, cand, path
            self._alone_back(promo)
            break  # the others are parts of it

    def _alone_back(self, promo: Promotion) -> None:
        """The layers promoted alone (their input still converted from float) stay int8 only if that alone saves
        MARGIN: float is the more accurate of two equals."""
        alone = converted_inputs(self.model, self.best, promo.anchors)
        if not alone or alone == promo.anchors:
            return
        label = f"{len(alone)} of them reading a converted input"
        back = {n: reason(Why.MEASURED, group=label, ratio=0.0) for n in alone}
        path = self.t.write(self.again(back), "int8_back.onnx")
        ratio = self.time(self.best_path, path)
        if self.record(Timed(label, sorted(alone), ratio, ratio < 1 / (1 - MARGIN)), True).kept:
            self.floated.update({n: reason(Why.MEASURED, group=label, ratio=ratio) for n in alone})
            self.best, self.best_path = self.again(), path

    def result(self, plan: QuantPlan, ratio: float, verdict: str = "", promoted: Promotion | None = None):
        promoted = self.promotion if promoted is None else promoted
        return PlacementResult(plan, ratio, self.timed, verdict, sum(self.in_turn), promoted)

    def against_fp32(self, threshold: float) -> PlacementResult:
        """The best plan timed against FP32; not faster, the light layers float (timed), else no int8 at all."""
        vs_fp32 = self.time(self.reference, self.best_path)
        if vs_fp32 < 1.0 or not any(d.action in INT8 for d in self.best.nodes):  # faster, or nothing int8 to undo
            return self.result(self.best, vs_fp32)
        heavy = groups(self.best, threshold, near=HEAVY)
        light = [n for _, nodes, _ in heavy for n in nodes]
        if light:
            probe = {n: reason(Why.MEASURED, group="fallback", ratio=0.0) for n in light}
            cand_path = self.t.write(self.again(probe), "fallback.onnx")
            ratio = self.time(self.reference, cand_path)
            label = f"fallback: {len(light)} node(s) under {HEAVY * threshold:g} MACs per conversion"
            self.timed.append(Timed(label, light, ratio / vs_fp32, ratio < 1))
            if ratio < 1.0:
                more = {n: reason(Why.MEASURED, group=label, ratio=ratio / vs_fp32) for n in light}
                verdict = f"int8 only where it pays: {len(light)} more node(s) kept float after timing"
                return self.result(self.again(more), ratio, verdict)
        every = {
            d.node: reason(Why.MEASURED, group="whole model", ratio=1 / vs_fp32)
            for d in self.best.nodes
            if d.action in INT8
        }
        verdict = (
            f"no placement tried made this model faster than FP32 on this CPU (best {vs_fp32:.2f}x): "
            "written without int8 compute; --objective size quantizes it anyway"
        )
        return self.result(self.replan({**self.fixed, **self.floated, **every}), 1.0, verdict, NO_PROMOTION)


def converted_inputs(model: ModelProto, plan: QuantPlan, anchors: frozenset[str]) -> frozenset[str]:
    """The anchors among these whose data input is converted from float (a graph input, or a float producer)."""
    idx = GraphIndex(model.graph)
    by_name = {n.name: n for n in model.graph.node}
    int8 = {d.node for d in plan.nodes if d.action in (Action.INT8, Action.PASSTHROUGH, Action.FOLDED)}
    out = set()
    for n in anchors:
        producer = idx.producer.get(by_name[n].input[0])
        if plan.decision(n).action in INT8 and (producer is None or producer.name not in int8):
            out.add(n)
    return frozenset(out)


def _accurate_enough(t: Trials, before: Path | Session, after: Path | Session, target: AccuracyTarget | None):
    """Whether a model with more on int8 keeps the accuracy as the accuracy guard sees it: its worst output stays at
    or above QUIET_DB, or loses less than the guard lets one layer cost (gain_for(SHARE) dB), pooled over the
    files and each file's averaged (a file at another scale sets the pooled figure alone, and hides the loss:
    PP-OCR rec's 8 more layers measured -0.5 dB pooled, -2.7 dB averaged, -2.4 dB on its eval files); and it
    still meets the target. (kept, (worst before, after))."""
    was, now = t.measure_model(before), t.measure_model(after)
    figures = [(worst_sqnr(was), worst_sqnr(now)), (typical_sqnr(was), typical_sqnr(now))]
    quiet = all(b >= QUIET_DB for _, b in figures)
    ok = (quiet or all(b > a - gain_for(SHARE) for a, b in figures)) and not (target and target.shortfall(now))
    return ok, figures[0]


@dataclass(frozen=True)
class PlacementStep:
    """Measured placement as an after-plan step: timed on the first batch of `data` (the held-aside files, or
    under an accuracy target the data it is measured on), accuracy checked on all of it; an accuracy target,
    if any, still met by every int8 move."""

    planner: Replanner
    threshold: float  # the cost rule's MACs per conversion
    target: AccuracyTarget | None
    data: FidelityData | None = None
    apply: Apply = w8a8
    name: str = "measured placement"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        data = self.data
        if data is None or data.src is None:
            return Outcome(plan)
        advance = ctx.progress("measured placement (timings)", None)
        replan, target = self.planner.replan, self.target
        result = place(ctx.model, ctx.reference, plan, replan, self.threshold, data, advance, target, self.apply)
        moved = next((t for t in result.timed if t.to == "int8" and t.kept), None)
        notes = ()
        if moved:
            notes = (
                f"measured placement: on int8 beyond the static rule ({moved.group}): the model ran "
                f"{moved.ratio:.2f}x the time, worst output {moved.sqnr_db[0]:.1f} -> {moved.sqnr_db[1]:.1f} dB",
            )
        warnings = (result.verdict,) if result.verdict else ()
        return Outcome(result.plan, Part({"placement": result.to_dict()}, notes, warnings))
