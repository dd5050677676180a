"""Per-scheme planning: from the float model and its data to a plan, the calibration record, where fidelity is
measured, and how to plan again with some nodes more precise (the accuracy-target search: W8A8 and dynamic
return them to float, w4a16 raises weights to 8 bits)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from onnx import ModelProto

from qcli.calibration.calibrate import calibrate_then_more
from qcli.core import hostcpu
from qcli.core.config import QuantConfig, WeightAlgo
from qcli.core.errors import InputError
from qcli.core.ops import ANCHORS, TRIAL
from qcli.core.plan import NO_PROMOTION, Action, Promotion, QuantPlan, Reason, Why
from qcli.core.progress import Progress
from qcli.io import model_io
from qcli.io.feeds import FeedSource, FidelityData
from qcli.measure.sensitivity import activation_sqnr
from qcli.passes.awq import awq_prepare
from qcli.schemes.dynamic.planner import plan_dynamic as _plan_dynamic
from qcli.schemes.w8a8.planner import W8A8Planner
from qcli.schemes.w8a8.prepare import prepare
from qcli.schemes.weight_only import stats as weight_stats
from qcli.schemes.weight_only.planner import plan_w4a16 as _plan_w4a16
from qcli.steps.weight_target import promoted

SENSITIVITY_BATCHES = 4  # calibration batches the accuracy guards measure on
SUSPECT_DB = 30.0  # an activation quantizing alone to fewer dB makes its readers candidates for the guard


@dataclass
class Planned:
    plan: QuantPlan
    calibration: dict | None
    fid: FidelityData
    replan: Callable[[dict[str, Reason]], QuantPlan] | None = None
    guard_data: FidelityData | None = None  # calibration batches the default accuracy guard measures on
    suspects: list[list[str]] = field(default_factory=list)  # its first candidates (see suspects())
    weight_stats: dict | None = None  # weight-only, data-aware: weight name -> statistics of its input
    refit: Callable[[QuantPlan], tuple[QuantPlan, dict] | None] | None = None  # W8A8: ranges from every file


def plan_w8a8(
    model: ModelProto,
    config: QuantConfig,
    calib_src: FeedSource | None,
    eval_src: FeedSource | None,
    progress: Progress,
) -> Planned:
    if calib_src is None:
        raise InputError(
            "W8A8 static quantization needs calibration data: pass --calib DIR "
            "(or use --scheme w4a16 for weight-only quantization without data)"
        )
    items, held = _split(calib_src, eval_src)
    prepared = prepare(model, config, calib_src, items, progress)
    planner = W8A8Planner(model, config, model_io.float_tensors(model), pinned=prepared.pinned)
    # Decisions are measured on the held-aside files with ranges from the others (unseen data); the model
    # written takes its ranges from every file (refit below). Not under an accuracy target: the model written is
    # then the one the target was verified on, on files its ranges never saw.
    also = held if not (config.min_sqnr or config.max_top1_drop) else []
    advance = progress("calibrating", len(items) + len(also))
    levels = planner.act_qtype.qmax - planner.act_qtype.qmin + 1
    batches = (calib_src.load(i) for i in items)
    more = (calib_src.load(i) for i in also) if also else None
    stats, stats_all = calibrate_then_more(model, planner.watch_list(), batches, more, config, levels, advance)

    def record(st: dict, files: list) -> dict:
        return {
            "method": config.calibrator.value,
            "methods_used": dict(Counter(s.method for s in st.values())),
            **prepared.done,
            "batches": len(files),
            "files": [p.name for p in files],
            "tensors": len(st),
            "ranges": {k: v.to_dict() for k, v in st.items()},
        }

    calibration = record(stats, items)
    act_sqnr, measured = None, {}
    plan = planner.plan(stats)
    guard_items = items[:SENSITIVITY_BATCHES]
    if config.min_activation_sqnr > 0 or config.accuracy_guard:  # each activation quantized alone
        guard = FidelityData(calib_src, guard_items, "").feeds(progress("activation pass", len(guard_items)))
        measured = activation_sqnr(model, plan.activations, guard)
        calibration["activation_sqnr_db"] = {k: round(v, 2) for k, v in measured.items() if v != float("inf")}
    if config.min_activation_sqnr > 0:  # the per-tensor guard (expert switch)
        act_sqnr = measured
        if any(v < config.min_activation_sqnr for v in act_sqnr.values()):
            plan = planner.plan(stats, act_sqnr)
    unmatched = [f"--overrides entry {p!r} matches no observed activation" for p in config.overrides.unmatched(stats)]
    unmatched += [
        f'--overrides entry [nodes."{p}"] matches no node name, op type or glob'
        for p in config.overrides.unmatched_nodes(model.graph.node)
    ]

    def finish(p: QuantPlan) -> QuantPlan:
        p.notes += prepared.notes
        p.warnings += unmatched
        return p

    def replan(more_float: dict[str, Reason], promotion: Promotion = NO_PROMOTION) -> QuantPlan:
        floats = model_io.float_tensors(model)
        pinned = {**prepared.pinned, **more_float}
        again = W8A8Planner(model, config, floats, planner.cpu, pinned=pinned, promotion=promotion)
        return finish(again.plan(stats, act_sqnr))

    def refit(p: QuantPlan) -> tuple[QuantPlan, dict] | None:
        """The plan's decisions (what is float and why, what runs on int8) with the ranges from every file, and
        its calibration record; None where no file was added (none held aside, or an accuracy target)."""
        if stats_all is None:
            return None
        kept = {d.node: d.reason for d in p.nodes if d.why in (Why.ACCURACY, Why.TARGET, Why.MEASURED)}
        int8 = [d for d in p.nodes if d.action in (Action.INT8, Action.INT8_OUT_FLOAT, Action.PASSTHROUGH)]
        promotion = Promotion(
            frozenset(d.node for d in int8 if d.op_type in ANCHORS),
            frozenset(d.op_type for d in int8 if d.op_type in TRIAL),
        )
        floats = model_io.float_tensors(model)
        again = W8A8Planner(model, config, floats, planner.cpu, pinned={**prepared.pinned, **kept}, promotion=promotion)
        decided_with = {"batches": len(items), "measured_on": [p.name for p in held]}
        record_all = {**calibration, **record(stats_all, items + held), "decided_with": decided_with}
        return finish(again.plan(stats_all, act_sqnr)), record_all

    fid = _fidelity_data(calib_src, eval_src, items, held)
    guard_data = FidelityData(calib_src, guard_items, f"{len(guard_items)} calibration batches")
    return Planned(finish(plan), calibration, fid, replan, guard_data, suspects(model, plan, measured), refit=refit)


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


def plan_w4a16(
    model: ModelProto,
    config: QuantConfig,
    calib_src: FeedSource | None,
    eval_src: FeedSource | None,
    progress: Progress,
) -> Planned:
    """Weight-only. rtn needs no data; gptq, awq and --clip-search read statistics of each weight's input
    (X^T X, mean |x|) from one pass over the calibration files (a fifth held aside for fidelity without --eval);
    awq also rescales the graph (folded where exact, else an explicit Mul)."""
    plan = _plan_w4a16(model, config)

    def replan(why: dict[str, Reason]) -> QuantPlan:  # the accuracy target's step: these weights more precise
        return promoted(plan, why)

    data_aware = config.weight_algo != WeightAlgo.RTN or config.clip_search
    if not data_aware:
        return Planned(plan, None, _data_only_for_fidelity(calib_src, eval_src), replan)
    if calib_src is None:
        what = "--clip-search" if config.weight_algo == WeightAlgo.RTN else f"--weight-algo {config.weight_algo.value}"
        raise InputError(f"{what} needs calibration data: pass --calib DIR")
    items, held = _split(calib_src, eval_src)
    advance = progress("weight statistics (X^T X per input)", len(items))
    stats = weight_stats.collect(model, plan, (calib_src.load(i) for i in items), advance)
    calibration: dict = {
        "method": config.weight_algo.value + (" + clip search" if config.clip_search else ""),
        "batches": len(items),
        "files": [p.name for p in items],
        "tensors": len(stats),
    }
    if config.weight_algo == WeightAlgo.AWQ:
        done = awq_prepare(model, plan, stats)
        stats = done.stats
        plan.notes += list(done.notes)
        calibration["awq"] = [x.to_dict() for x in done.layers]
    return Planned(plan, calibration, _fidelity_data(calib_src, eval_src, items, held), replan, weight_stats=stats)


def plan_dynamic(model: ModelProto, config: QuantConfig, calib_src: FeedSource | None, eval_src: FeedSource | None):
    """No calibration: activations are quantized at run time. Any data given serves fidelity (and a target)."""
    cpu = hostcpu.host()
    plan = _plan_dynamic(model, config, cpu=cpu)
    return Planned(
        plan, None, _data_only_for_fidelity(calib_src, eval_src), lambda more: _plan_dynamic(model, config, more, cpu)
    )


def _data_only_for_fidelity(calib_src: FeedSource | None, eval_src: FeedSource | None) -> FidelityData:
    src = eval_src or calib_src
    if src is None:
        return FidelityData(None, [], "")
    flag = "--eval" if eval_src else "--calib"
    return FidelityData(src, src.items, f"{flag} {src.folder} ({len(src.items)} batches)")


def _split(calib_src: FeedSource, eval_src: FeedSource | None) -> tuple[list, list]:
    """The calibration files to use, and those held aside to measure fidelity on unseen data: a fifth, when
    there is no --eval and there are at least 5."""
    items = list(calib_src.items)
    if eval_src is not None or len(items) < 5:
        return items, []
    cut = max(1, len(items) // 5)
    return items[:-cut], items[-cut:]


def _fidelity_data(calib_src: FeedSource, eval_src: FeedSource | None, items: list, held: list) -> FidelityData:
    """Where a scheme that fitted something to `items` measures fidelity: --eval, else the held-aside files."""
    if eval_src:
        return _data_only_for_fidelity(None, eval_src)
    if held:
        return FidelityData(calib_src, held, f"{len(held)} calibration file(s) held aside")
    return FidelityData(
        calib_src, items, f"the {len(items)} calibration file(s) themselves (fewer than 5: none held aside)"
    )
