"""After the static plan, the steps that measure models and change it: the accuracy target's search, the
default accuracy guard and measured placement; then W8A8's ranges refit on every calibration file. Each takes
the pipeline's job (model, plan, report, data) and leaves its plan and findings in it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from qcli.core.config import Objective, Placement, QuantConfig, Scheme, WeightFormat, effective
from qcli.core.errors import QcliError
from qcli.core.plan import Action, QuantPlan, Why
from qcli.core.progress import Progress
from qcli.io import model_io
from qcli.io.batches import at_sizes
from qcli.io.feeds import input_specs
from qcli.passes.dynamic import apply_dynamic
from qcli.passes.int4 import apply_w4a16
from qcli.passes.nbits import FP32
from qcli.report.report import Report
from qcli.steps import weight_format, weight_target
from qcli.steps.guard import guard
from qcli.steps.placement import place
from qcli.steps.target import AccuracyTarget, SearchResult, search
from qcli.steps.trials import w8a8
from qcli.steps.weight_placement import place_weights
from qcli.steps.weight_target import Quantized
from qcli.weights import WeightOptions

AUTO_MAX_BYTES = 1 << 30  # --format auto times the forms of models up to this size


def meet(job, config: QuantConfig, target: AccuracyTarget, progress: Progress, ort_config=None) -> SearchResult:
    """The plan with the fewest nodes float that meets the target on the fidelity data; into job and report."""
    advance = progress("accuracy-target search (models tried)", None)
    if config.scheme in (Scheme.W4A16, Scheme.W8A16):
        found = _meet_weight_only(job, config, target, progress, ort_config, advance)
    else:
        apply = (lambda m, p: apply_dynamic(m, p)) if config.scheme == Scheme.DYNAMIC else w8a8
        found = search(job.model, job.reference, job.plan, job.replan, target, job.fid, advance, apply)
    job.plan = plan = found.plan
    report = job.report
    report.target = found.to_dict(target)
    describe(report, config, plan)
    if job.fid.src is not None and job.fid.desc.startswith("the "):
        report.warnings.append(
            "the accuracy target was checked on the calibration files themselves (fewer than 5, no --eval): "
            "give --eval data for a target that holds on unseen inputs"
        )
    return found


def _meet_weight_only(job, config: QuantConfig, target: AccuracyTarget, progress, ort_config, advance) -> SearchResult:
    """Weights one step more precise (weight_target.py), each quantized once, every candidate measured in the form
    that will be written: an explicit --format's; under auto the fastest form timed on the first plan, and the
    exact math (fp32 compute) when the target is out of that form's reach."""
    job.quantized = q = Quantized(job.weight_stats, WeightOptions.of(config))
    units, cost = weight_target.UNITS, weight_target.sizes(job.model, job.plan).get
    relief = "8-bit blocks" if config.scheme == Scheme.W4A16 else "float"
    forms = [(f"the form written (--format {config.weight_format.value})", q.writer())]
    if config.weight_format == WeightFormat.AUTO:
        # -inf: no margin to the exact math, no target yet (the search enforces it); argmax flips still count
        first = format_choice(job, config, progress, ort_config, q.of(job.model, job.plan), min_sqnr=-math.inf)
        exact = ("the exact math (MatMulNBits, fp32 compute)", q.write_exact)
        fast = (f"{first.chosen}, the fastest form on this CPU before the search", q.writer(*first.form()))
        forms = [exact] if first.form()[:2] == (WeightFormat.ORT, FP32) else [fast, exact]
    for name, apply in forms:
        found = search(
            job.model, job.reference, job.plan, job.replan, target, job.fid, advance, apply, units, relief, cost
        )
        found.measured_as = name
        if found.met:
            break
    return found


def run_guard(job, config: QuantConfig, progress: Progress) -> None:
    """The default accuracy guard (guard.py) on the calibration batches; its plan and findings into job and report."""
    advance = progress("accuracy guard (models tried)", None)
    result = guard(job.model, job.reference, job.plan, job.replan, job.guard_data, job.suspects, advance)
    job.plan = result.plan
    job.report.guard = result.to_dict()
    if result.note:
        job.report.notes.append(f"accuracy guard: {result.note}; nothing kept float for accuracy")
    describe(job.report, config, result.plan)


def run_placement(job, config: QuantConfig, progress: Progress) -> None:
    """Measured placement (placement.py) on the fidelity data's first batch; plan and timings into job, report."""
    data = job.fid if job.fid.src is not None else job.guard_data
    if data is None or data.src is None:
        return
    advance = progress("measured placement (timings)", None)
    target = AccuracyTarget(config.min_sqnr, config.max_top1_drop) or None
    result = place(job.model, job.reference, job.plan, job.replan, config.macs_threshold, data, advance, target)
    job.plan = result.plan
    job.report.placement = result.to_dict()
    moved = next((t for t in result.timed if t.to == "int8" and t.kept), None)
    if moved:
        job.report.notes.append(
            f"measured placement: on int8 beyond the static rule ({moved.group}): the model ran {moved.ratio:.2f}x "
            f"the time, worst output {moved.sqnr_db[0]:.1f} -> {moved.sqnr_db[1]:.1f} dB"
        )
    if result.verdict:
        job.report.warnings.append(result.verdict)
    describe(job.report, config, result.plan)


def refit_ranges(job, config: QuantConfig) -> None:
    """W8A8: the decided plan with its ranges from every calibration file, the held-aside ones included (the
    decisions were measured on those, with ranges from the others); see schemes.plan_w8a8 for when."""
    refitted = job.refit(job.plan) if job.refit else None
    if refitted is None:
        return
    plan, job.report.calibration = refitted
    plan.notes, plan.warnings = job.plan.notes, job.plan.warnings
    job.plan = plan
    describe(job.report, config, plan)
    c = job.report.calibration
    held = len(c["decided_with"]["measured_on"])
    job.report.notes.append(
        f"ranges from all {c['batches']} calibration files; the decisions were measured on the {held} held aside, "
        f"with ranges from the other {c['decided_with']['batches']}"
    )
    job.fid = replace(job.fid, desc=f"{job.fid.desc}, then added to the ranges (pass --eval for unseen data)")


def describe(report: Report, config: QuantConfig, plan: QuantPlan) -> None:
    """The report's view of a plan: the plan itself, the effective config, the nodes kept float and why."""
    report.plan = plan.to_dict()
    report.decisions = plan.decisions  # a search's plans carry copies of the first plan's decisions
    report.config = effective(config, plan.decisions)
    report.float_for_speed = [d.node for d in plan.by_reason(Why.SPEED, Why.MEASURED)]
    report.float_for_accuracy = [d.node for d in plan.by_reason(Why.ACCURACY, Why.TARGET) if d.action == Action.FLOAT]


def choose_weight_format(job, config: QuantConfig, progress: Progress, ort_config, quantized) -> None:
    """W4A16 / W8A16 --format auto: the form (and MatMulNBits accuracy level) measured fastest on this CPU among
    those that keep the exact math's fidelity (weight_format.py), into the plan's decisions and the report."""
    choice = format_choice(job, config, progress, ort_config, quantized, config.min_sqnr)
    job.plan.decisions.update(choice.decisions())
    measured = config.objective == Objective.LATENCY and config.placement == Placement.MEASURED
    if measured and choice.slower_than_float:  # time weights back to float (weight_placement.py)
        advance = progress("measured placement (timings)", None)

        def write(model, plan: QuantPlan):  # in the chosen form (the plan's decisions), weights quantized once
            return apply_w4a16(model, plan, quantized=quantized)

        start = choice.start()  # the sizes the forms were timed at
        timing = at_sizes(job.model, _timing_feeds(job, 1)[0], config.timing_batches).only(start)
        result = place_weights(job.model, job.plan, job.reference, timing, write, advance, start)
        job.plan = result.plan
        job.report.placement = result.to_dict()
        job.report.warnings += [result.verdict] if result.verdict else []
    else:
        job.report.warnings += _slower_than_float(choice, config.min_sqnr is None)
    describe(job.report, config, job.plan)


def format_choice(job, config: QuantConfig, progress: Progress, ort_config, quantized, min_sqnr: float | None):
    """weight_format.choose on the job's plan and fidelity data (inputs made from the input specs without data)."""
    plan, fid = job.plan, job.fid
    size = model_io.model_bytes(job.model)
    if size > AUTO_MAX_BYTES:  # every candidate's session at once would break the memory bound
        return weight_format.unmeasured(
            f"the model ({size / 2**30:.1f} GB) is too large to time every form at once within the memory bound"
        )
    advance = progress("choosing the weight format (timings)", 1)

    def choose(batches: list) -> weight_format.FormatChoice:
        timing = at_sizes(job.model, batches[0], config.timing_batches)
        return weight_format.choose(
            job.model,
            plan,
            job.reference,
            batches,
            ort_config=ort_config,
            quantized=quantized,
            min_sqnr=min_sqnr,
            timing=timing,
        )

    try:
        choice = choose(_timing_feeds(job, weight_format.FIDELITY_BATCHES))
    except QcliError as e:
        if fid.src is not None:
            raise
        choice = weight_format.unmeasured(f"no data, and inputs made from the input specs did not run ({e})")
    else:
        if fid.src is None:  # speed does not depend on the values
            choice = replace(choice, why=f"no data: timed on inputs made from the input specs; {choice.why}")
    advance()
    return choice


def _timing_feeds(job, limit: int) -> list[dict]:
    """The fidelity data's first `limit` batches, else one input made from the input specs."""
    fid = job.fid
    if fid.src is None:
        return [synthetic_feed(input_specs(job.model))]
    return [fid.src.load(i) for i in fid.items[:limit]]


def _slower_than_float(choice: weight_format.FormatChoice, hint: bool) -> list[str]:
    """The exact form chosen but slower than FP32 here: say so, and what the faster forms would cost."""
    chosen = choice.chosen_trial
    if chosen is None or chosen.ratio < 1:
        return []
    faster = [t for t in choice.trials if t.ratio < 1 and not t.accepted]
    alt = "; ".join(f"{t.name} runs {t.ratio:.2f}x, {t.sqnr_vs_exact_db:.1f} dB from the exact math" for t in faster)
    at = f" at batch {max(chosen.timings, key=lambda x: x.ratio).batch}" if len(chosen.timings) > 1 else ""
    return [
        f"--format auto: the only form that keeps the exact math's fidelity ({chosen.name}) runs "
        f"{chosen.ratio:.2f}x FP32{at} on this CPU"
        + (f"; faster but less exact: {alt}" if alt else "")
        + ("; --min-sqnr DB accepts a faster form whose outputs meet it against FP32" if alt and hint else "")
    ]


def synthetic_feed(specs) -> dict:
    """One input per spec for timing: dynamic dimensions 1 (the first) or 32, floats from a fixed normal
    stream, integers 1 (a valid token id, index or mask value)."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in specs:
        shape = tuple(d if isinstance(d, int) else (1 if i == 0 else 32) for i, d in enumerate(spec.shape))
        if spec.dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.ones(shape, spec.dtype)
    return feed
