"""W8A8 planning from data: prepare the float model (equalize, smooth), calibrate, plan, and the replanner the
after-plan steps call (nodes float, nodes promoted to int8, ranges from every file).

Without an accuracy target, a fifth of the calibration files (at least 5 given) is held aside, --eval or not:
the decisions (the accuracy guard, measured placement) are measured on those, with ranges from the others
(unseen data, never --eval's); the refit then adds them to the ranges and keeps that only where it measures
no worse on them (steps/refit.py). Under an accuracy target the model written is the one the target was
verified on, on files its ranges never saw (--eval, else the held files).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from onnx import ModelProto

from qcli.calibration import bias
from qcli.calibration.calibrate import calibrate_then_more, observing
from qcli.calibration.observers import TensorStats
from qcli.calibration.scales import FileScales
from qcli.core.config import QuantConfig
from qcli.core.errors import InputError
from qcli.core.hostcpu import CpuInfo
from qcli.core.ops import ANCHORS, TRIAL
from qcli.core.plan import NO_PROMOTION, Action, Promotion, QuantPlan, Reason, Why
from qcli.core.progress import Progress
from qcli.io import model_io
from qcli.io.feeds import FidelityData
from qcli.measure.sensitivity import activation_sqnr
from qcli.schemes.base import Data, Planned, fidelity_after_fit, split
from qcli.schemes.w8a8 import ranges
from qcli.schemes.w8a8.planner import W8A8Planner
from qcli.schemes.w8a8.prepare import prepare

PROBE_BATCHES = 4  # calibration batches each activation is quantized alone on (the guard's first suspects)
DECIDE_FILES = 16  # held-aside files the decisions are measured on, at most
BIAS_FILES = 8  # calibration files bias correction's shifts are measured on, at most
SUSPECT_DB = 30.0  # an activation quantizing alone to fewer dB makes its readers candidates for the guard


@dataclass(frozen=True)
class Replanner:
    """The W8A8 planner again on the same model, statistics and pinned nodes."""

    model: ModelProto
    config: QuantConfig
    cpu: CpuInfo
    pinned: dict[str, Reason]
    stats: dict[str, TensorStats]
    act_sqnr: dict[str, float] | None
    notes: tuple[str, ...]  # what preparing the float model did: on every plan
    warnings: tuple[str, ...]  # overrides entries that match nothing: on every plan
    # Every file's ranges and calibration record (None: no file was held aside, or an accuracy target)
    stats_all: dict[str, TensorStats] | None = None
    calibration_all: dict | None = None
    corrections: dict[str, tuple[float, ...]] = field(default_factory=dict)  # bias correction, per layer

    def replan(self, why: dict[str, Reason], promotion: Promotion = NO_PROMOTION) -> QuantPlan:
        return self._plan(self.stats, why, promotion)

    def refit(self, plan: QuantPlan) -> tuple[QuantPlan, dict] | None:
        """The plan's decisions (what is float and why, what runs on int8) with the ranges from every file."""
        if self.stats_all is None or self.calibration_all is None:  # none held, or nothing observed
            return None
        kept = {d.node: d.reason for d in plan.nodes if d.why in (Why.ACCURACY, Why.TARGET, Why.MEASURED)}
        int8 = [d for d in plan.nodes if d.action in (Action.INT8, Action.INT8_OUT_FLOAT, Action.PASSTHROUGH)]
        promotion = Promotion(
            frozenset(d.node for d in int8 if d.op_type in ANCHORS),
            frozenset(d.op_type for d in int8 if d.op_type in TRIAL),
        )
        return self._plan(self.stats_all, kept, promotion), self.calibration_all

    def finish(self, plan: QuantPlan) -> QuantPlan:
        plan.notes += self.notes
        plan.warnings += self.warnings
        int8 = {d.node for d in plan.by_action(Action.INT8, Action.INT8_OUT_FLOAT)}
        plan.bias_corrections = {n: c for n, c in self.corrections.items() if n in int8}
        return plan

    def _plan(self, stats, why: dict[str, Reason], promotion: Promotion) -> QuantPlan:
        floats = model_io.float_tensors(self.model)
        pinned = {**self.pinned, **why}
        again = W8A8Planner(self.model, self.config, floats, self.cpu, pinned=pinned, promotion=promotion)
        return self.finish(again.plan(stats, self.act_sqnr))


@dataclass(frozen=True)
class W8A8Planned(Planned):
    replanner: Replanner | None = None
    decide: FidelityData | None = None  # where the guard and measured placement measure: held-aside files
    held: FidelityData | None = None  # every held-aside file (the refit is verified on them); None: none held
    suspects: tuple[tuple[str, ...], ...] = field(default_factory=tuple)  # its first candidates
    observed: dict = field(default_factory=dict)  # what preparing the float model read from the data (prepare.py)
    scaling: tuple = ()  # channel scaling's edits (passes/unscale.ScalingEdit), taken back where idle


def plan_w8a8(model: ModelProto, config: QuantConfig, data: Data, progress: Progress) -> W8A8Planned:
    src = data.calib
    if src is None:
        raise InputError(
            "W8A8 static quantization needs calibration data: pass --calib DIR "
            "(without data: --scheme dynamic for int8 weights with activations quantized at run time, or "
            "--scheme w4a16 for weight-only int4)"
        )
    target = bool(config.min_sqnr or config.max_top1_drop)
    items, held = split(src, data.eval if target else None)
    prepared = prepare(model, config, src, items, progress)
    planner = W8A8Planner(model, config, model_io.float_tensors(model), pinned=prepared.pinned)
    also = held if not target else []
    probe_items = items[:PROBE_BATCHES]
    watch = planner.watch_list()
    with observing(model, watch) as sess:  # calibration and the activation pass: one session
        advance = progress("calibrating", len(items) + len(also))
        levels = planner.act_qtype.qmax - planner.act_qtype.qmin + 1
        scales = FileScales()  # each file's scale: one far from the others is named
        batches, more = scales.watch(items, src.load), scales.watch(also, src.load) if also else None
        stats, stats_all = calibrate_then_more(sess, watch, batches, more, config, levels, advance)
        searched = None
        if any(s.candidates for s in stats.values()):  # --calibrator auto: ranges chosen at the outputs
            why = "none is held aside where an accuracy target is measured on --eval" if target and data.eval else ""
            found = ranges.search_data(src, items, held)
            searched = ranges.search(model, planner.plan, stats, found, progress, sess, why_none=why)
            stats, stats_all = searched.stats, searched.apply(stats_all)
        plan = planner.plan(stats)
        corrections = {}
        if config.w8a8.bias_correction:  # each int8 Conv/Gemm's shift from rounding its weights
            found, few = bias.layers(model, plan), items[:BIAS_FILES]
            feeds = FidelityData(src, few, "").feeds(progress("bias correction", len(few)))
            corrections = {k: tuple(map(float, v)) for k, v in bias.shifts(model, found, sess, feeds).items()}
        measured = None
        if config.w8a8.min_activation_sqnr > 0 or config.w8a8.accuracy_guard:  # each activation quantized alone
            probe = FidelityData(src, probe_items, "").feeds(progress("activation pass", len(probe_items)))
            measured = activation_sqnr(model, plan.activations, probe, sess)
    record = _Record(config, prepared.done)
    calibration = record(stats, items)
    if searched is not None:
        calibration["search"] = searched.record
    if measured is not None:
        calibration["activation_sqnr_db"] = {k: round(v, 2) for k, v in measured.items() if v != float("inf")}
    act_sqnr = measured if config.w8a8.min_activation_sqnr > 0 else None  # the per-tensor guard (expert switch)
    if act_sqnr and any(v < config.w8a8.min_activation_sqnr for v in act_sqnr.values()):
        plan = planner.plan(stats, act_sqnr)
    decide, all_held = _decision_data(src, items, held)
    fitted = [p.name for p in decide.items if p not in held]
    decided_with = {"batches": len(items), "measured_on": [p.name for p in held], "and_fitted": fitted}
    if held and not target:
        calibration["decided_with"] = decided_with
    every = {**calibration, **record(stats_all, items + held), "decided_with": decided_with} if stats_all else None
    found = _unmatched(config, model, stats) + scales.warnings() + _constant_inputs(model, stats_all or stats)
    notes, unmatched = tuple(prepared.notes), tuple(found)
    replanner = Replanner(
        model, config, planner.cpu, prepared.pinned, stats, act_sqnr, notes, unmatched, stats_all, every, corrections
    )
    fid = fidelity_after_fit(data, items, held)
    sus = tuple(tuple(s) for s in suspects(model, plan, measured or {}))
    planned = W8A8Planned(replanner.finish(plan), calibration, fid, replanner, decide, all_held, sus, prepared.observed)
    return replace(planned, scaling=tuple(prepared.scaling))


def _decision_data(src, items: list, held: list) -> tuple[FidelityData, FidelityData | None]:
    """Where the decisions are measured, and every held file. The held files (unseen by the ranges) and, as the
    range search does (ranges.search_data), some the ranges came from: on held files alone a value outside the
    ranges sets the error, and hides the noise a decision adds (PP-OCR rec: 8 more layers on int8 measured
    +0.03 dB on its 4 held files, -2.7 dB with 8 fitted ones beside them, -2.4 dB on its eval files). With no
    file held: the calibration files themselves."""
    if not held:
        few = items[:PROBE_BATCHES]
        return FidelityData(src, few, f"{len(few)} calibration file(s) (in the ranges)", in_sample=True), None
    decide = ranges.search_data(src, items, held[:DECIDE_FILES])
    if len(decide.items) == len(held[:DECIDE_FILES]):  # too few held for fitted ones beside them
        decide = replace(decide, desc=f"{len(decide.items)} calibration file(s) held aside")
    return decide, FidelityData(src, held, f"{len(held)} calibration file(s) held aside")


@dataclass(frozen=True)
class _Record:
    """The calibration record of the report, for some files' ranges."""

    config: QuantConfig
    prepared: dict  # what equalize / smooth did

    def __call__(self, stats: dict[str, TensorStats], files: list) -> dict:
        return {
            "method": self.config.w8a8.calibrator.value,
            "methods_used": dict(Counter(s.method for s in stats.values())),
            **self.prepared,
            "batches": len(files),
            "files": [p.name for p in files],
            "tensors": len(stats),
            "ranges": {k: v.to_dict() for k, v in stats.items()},
            "histograms": pictured(stats),
        }


def pictured(stats: dict[str, TensorStats], n: int = 8) -> dict[str, dict]:
    """The n most clipped ranges (the least of the observed span kept), then the widest, with their
    histograms: what the HTML report draws."""
    seen = {k: s for k, s in stats.items() if s.histogram and s.observed and s.observed[1] > s.observed[0]}

    def kept(s: TensorStats) -> float:
        return (min(s.rmax, s.observed[1]) - max(s.rmin, s.observed[0])) / (s.observed[1] - s.observed[0])

    clipped = sorted((k for k in seen if kept(seen[k]) < 0.999), key=lambda k: kept(seen[k]))[:n]
    wide = sorted(seen, key=lambda k: seen[k].observed[0] - seen[k].observed[1])
    chosen = clipped + [k for k in wide if k not in clipped][: n - len(clipped)]
    return {
        k: {
            "observed": list(seen[k].observed),
            "range": [seen[k].rmin, seen[k].rmax],
            "method": seen[k].method,
            "kept": round(kept(seen[k]), 4),
            "counts": list(seen[k].histogram),
        }
        for k in chosen
    }


def _constant_inputs(model: ModelProto, stats: dict[str, TensorStats]) -> list[str]:
    """A model input holding one value in every calibration file (a folder of zeros, a recipe that blanks its
    images): the ranges fitted to it, and fidelity measured on such files, say nothing of real inputs."""
    out = []
    for i in model.graph.input:
        s = stats.get(i.name)
        if s is not None and s.observed and s.observed[0] == s.observed[1]:
            out.append(
                f"calibration data: input {i.name!r} holds the one value {s.observed[0]:g} in every file: the "
                "ranges fitted to it (and fidelity measured on such files) say nothing of real inputs; check the "
                "files or the recipe"
            )
    return out


def _unmatched(config: QuantConfig, model: ModelProto, stats: dict) -> list[str]:
    overrides = config.int8.overrides
    out = [f"--overrides entry {p!r} matches no observed activation" for p in overrides.unmatched(stats)]
    return out + [
        f'--overrides entry [nodes."{p}"] matches no node name, op type or glob'
        for p in overrides.unmatched_nodes(model.graph.node)
    ]


def suspects(model: ModelProto, plan: QuantPlan, act_sqnr: dict[str, float]) -> list[list[str]]:
    """The int8 compute readers of each activation that quantizes badly on its own, worst tensor first: the
    accuracy guard's first candidates (whether they matter is measured at the outputs)."""
    compute = {d.node for d in plan.nodes if d.action in (Action.INT8, Action.INT8_OUT_FLOAT) and d.op_type in ANCHORS}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for t in node.input:
            if node.name in compute and t in act_sqnr:
                readers.setdefault(t, []).append(node.name)
    weak = sorted((db, t) for t, db in act_sqnr.items() if db < SUSPECT_DB and t in readers)
    return [readers[t] for _, t in weak]
