"""quantize() and compare(): load -> preprocess -> calibrate -> plan -> rewrite -> save -> evaluate -> report."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qcli.compare import compare
from qcli.core.config import Objective, Placement, QuantConfig, Scheme, WeightAlgo, WeightFormat, unmatched_excludes
from qcli.core.errors import GateFailed, InputError, InternalError, Interrupted
from qcli.core.graph import name_nodes
from qcli.core.plan import QuantPlan, Reason
from qcli.core.progress import Progress, no_progress
from qcli.io import model_io
from qcli.io.feeds import FeedSource, FidelityData, input_specs
from qcli.io.session import release_memory
from qcli.measure.diagnose import layer_errors
from qcli.measure.figures import measure
from qcli.passes.dynamic import apply_dynamic
from qcli.passes.int4 import apply_w4a16
from qcli.passes.preprocess import lift_constants, preprocess
from qcli.passes.qdq import apply_w8a8
from qcli.passes.weight_only import weight_errors
from qcli.report.provenance import provenance
from qcli.report.report import Report, write_beside
from qcli.schemes import planning as schemes
from qcli.steps.refine import choose_weight_format, describe, meet, refit_ranges, run_guard, run_placement
from qcli.steps.target import AccuracyTarget
from qcli.steps.weight_target import Quantized
from qcli.weights import WeightOptions

NBITS_LEVEL = "session.qdq_matmulnbits_accuracy_level"
LAYER_BATCHES = 4  # evaluation batches used for the per-layer error table


@dataclass
class QuantizeResult:
    plan: QuantPlan
    report: Report
    output: Path | None
    written: list[Path] = field(default_factory=list)  # the model and its report files


def default_output(model: Path, scheme: Scheme) -> Path:
    suffix = {Scheme.W8A8: ".int8.onnx", Scheme.DYNAMIC: ".dyn.onnx", Scheme.W8A16: ".w8.onnx"}.get(
        scheme, ".int4.onnx"
    )
    return model.with_name(model.stem + suffix)


def _check_paths(model_path: Path, out: Path) -> None:
    if out.resolve() == model_path.resolve() or (out.exists() and out.samefile(model_path)):
        raise InputError(f"output {out} is the input model; choose another -o path (the input is never overwritten)")
    if out.suffix != ".onnx":
        raise InputError(f"output {out} should end in .onnx")


def quantize(
    model_path: Path,
    config: QuantConfig,
    calib: Path | None = None,
    out: Path | None = None,
    eval_dir: Path | None = None,
    dry_run: bool = False,
    progress: Progress = no_progress,
    latency_runs: int = 30,
    ort_config: dict[str, str] | None = None,
    write_report: bool = True,
    command: str | None = None,
) -> QuantizeResult:
    """Quantize `model_path` into `out` and measure it; writes OUT, OUT.report.json and OUT.report.md
    (unless dry_run; write_report=False skips the report files)."""
    model_path = Path(model_path)
    out = Path(out) if out else default_output(model_path, config.scheme)
    _check_paths(model_path, out)
    target = AccuracyTarget(config.min_sqnr, config.max_top1_drop)
    with contextlib.ExitStack() as stack:
        job = _plan(stack, model_path, config, calib, eval_dir, out, progress)
        guarded = not target and config.accuracy_guard and job.replan and job.guard_data
        if dry_run:
            if job.replan:
                step = "accuracy-target search" if target else "accuracy guard" if guarded else ""
                step += " and " if step and config.placement == Placement.MEASURED else ""
                step += "measured placement" if config.placement == Placement.MEASURED else ""
                if step:
                    job.report.notes.append(f"--dry-run: the plan before the {step} (it measures models)")
            refit_ranges(job, config)
            _provenance(job, calib, command)
            return QuantizeResult(job.plan, job.report, None)
        if target and job.fid.src is None:
            raise InputError(
                "an accuracy target (--min-sqnr, --max-top1-drop) is measured on data: pass --eval DIR (or --calib DIR)"
            )
        written: list[Path] = []
        try:
            found = meet(job, config, target, progress, ort_config) if target and job.replan else None
            if guarded:
                run_guard(job, config, progress)
            measured = config.objective == Objective.LATENCY and config.placement == Placement.MEASURED
            if job.replan and config.scheme == Scheme.W8A8 and measured:
                run_placement(job, config, progress)
            refit_ranges(job, config)
            _provenance(job, calib, command)
            _write_and_measure(job, config, out, latency_runs, progress, ort_config, written)
            if write_report:
                written += write_beside(job.report, out)
        except KeyboardInterrupt as e:
            raise Interrupted(written) from e
        result = QuantizeResult(job.plan, job.report, out, written)
        late = target.shortfall(job.report.fidelity) if found and found.met and job.report.fidelity else None
        if late:  # the search measured the exact math; the form written (e.g. int8 compute) must hold it too
            raise GateFailed(f"accuracy target not met by the model written ({late}): {out}", job.report)
        if found and not found.met:
            where = "back to float" if found.relief == "float" else f"at {found.relief}"
            raise GateFailed(
                f"accuracy target not met ({found.shortfall}) with {len(found.returned)} node(s) {where}; "
                f"wrote the most accurate model found: {out}",
                job.report,
            )
        return result


@dataclass
class _Job:
    """What quantize() carries from planning to writing. It holds the only reference to the float graph,
    so the graph can be freed before the measurement sessions load."""

    model: onnx.ModelProto | None
    plan: QuantPlan
    report: Report
    fid: FidelityData
    reference: Path  # the model fidelity is measured against (the input, or a renamed copy of it)
    replan: Callable[[dict[str, Reason]], QuantPlan] | None = None  # W8A8: the plan again, these nodes float
    guard_data: FidelityData | None = None  # where the default accuracy guard measures
    suspects: list[list[str]] = field(default_factory=list)  # the guard's first candidates
    weight_stats: dict | None = None  # weight-only, data-aware algorithms: statistics of each weight's input
    quantized: Quantized | None = None  # weight-only: the weights the accuracy target's search quantized
    refit: Callable[[QuantPlan], tuple[QuantPlan, dict] | None] | None = None  # W8A8: ranges from every file


def _plan(stack, model_path: Path, config: QuantConfig, calib, eval_dir, out: Path, progress: Progress) -> _Job:
    model = model_io.load(model_path)
    specs = input_specs(model)
    reference, renamed = _unique_names(model, model_path, stack)
    model, notes = preprocess(
        model, config.fold_batchnorm, inplace=True, keep=config.mentions
    )  # one copy in memory, not two
    model, opset_note = _upgrade_opset(model, config)
    notes += [opset_note] if opset_note else []
    calib_src = FeedSource(calib, specs, config.calib_limit, model=model_path.name) if calib else None
    eval_src = FeedSource(eval_dir, specs, model=model_path.name) if eval_dir else None
    if config.scheme == Scheme.W8A8:
        planned = schemes.plan_w8a8(model, config, calib_src, eval_src, progress)
    elif config.scheme == Scheme.DYNAMIC:
        planned = schemes.plan_dynamic(model, config, calib_src, eval_src)
    else:
        planned = schemes.plan_w4a16(model, config, calib_src, eval_src, progress)
    plan, calibration, fid = planned.plan, planned.calibration, planned.fid
    if renamed:
        notes.append(f"named {renamed} unnamed or duplicate-named node(s)")
    if reference != model_path:
        notes.append(
            "the input has duplicate node names, which onnxruntime refuses: fidelity and latency "
            "are measured against the same model with unique node names"
        )
    plan.notes += notes
    report = Report(
        "quantize",
        str(model_path),
        str(out),
        decisions=plan.decisions,
        notes=list(plan.notes),
        warnings=_warnings(config, model, plan, calib_src),
        calibration=calibration,
    )
    describe(report, config, plan)
    return _Job(
        model,
        plan,
        report,
        fid,
        reference,
        planned.replan,
        planned.guard_data,
        planned.suspects,
        planned.weight_stats,
        refit=planned.refit,
    )


def _provenance(job: _Job, calib: Path | None, command: str | None) -> None:
    calib_files = job.report.calibration["files"] if job.report.calibration else []
    used = [Path(calib) / f for f in calib_files] if calib else []
    job.report.provenance = provenance({"calibration": used, "evaluation": list(job.fid.items)}, command)


def _unique_names(model: onnx.ModelProto, model_path: Path, stack: contextlib.ExitStack) -> tuple[Path, int]:
    """Name every node uniquely (the plan is keyed by node name). onnxruntime refuses a model with duplicate
    node names, so fidelity is then measured against a renamed copy of the input (same computation)."""
    named = [n.name for n in model.graph.node if n.name]
    duplicates = len(named) != len(set(named))
    renamed = name_nodes(model.graph)
    if not duplicates:
        return model_path, renamed
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qcli-ref-")))
    return model_io.save_for_session(model, tmp, model_path.name), renamed


def _write_and_measure(job: _Job, config: QuantConfig, out: Path, latency_runs, progress, ort_config, written) -> None:
    plan, report, fid = job.plan, job.report, job.fid
    qnames: dict[str, str] = {}
    if config.scheme == Scheme.W8A8:
        qmodel, qnames = apply_w8a8(job.model, plan)
    elif config.scheme == Scheme.DYNAMIC:
        qmodel = apply_dynamic(job.model, plan, inplace=True)
    else:
        stats = job.weight_stats
        cache = job.quantized or Quantized(stats, WeightOptions.of(config))  # the target's search filled it
        quantized = cache.of(job.model, plan)
        job.quantized = cache = None
        errors = weight_errors(job.model, quantized, stats)
        report.weight_errors = {key[0]: e.to_dict() for key, e in errors.items()}
        job.weight_stats = stats = None
        if config.weight_format == WeightFormat.AUTO:
            choose_weight_format(job, config, progress, ort_config, quantized)
            plan = job.plan  # measured placement may have returned weights to float
            kept = {w.tensor for w in plan.weights}
            report.weight_errors = {t: e for t, e in report.weight_errors.items() if t in kept}
        qmodel = apply_w4a16(job.model, plan, inplace=True, quantized=quantized)  # the float graph is done
    if not _check_valid(qmodel, job.reference):
        report.notes.append(
            "the input model does not pass onnx.checker's full check; output checked at "
            "the basic level the input passes"
        )
    saved = progress("saving", 1)
    model_io.save_atomic(qmodel, out)
    saved()
    written.append(out)
    job.replan = None  # its closure holds the float graph too
    qmodel, layers = None, None  # the output is read back from its file where needed
    if qnames and fid.src is not None:  # the per-layer diagnosis: the float graph's session, then the output's
        items = fid.items[:LAYER_BATCHES]
        feeds = FidelityData(fid.src, items, "").feeds(progress("per-layer pass", len(items)))
        layers = layer_errors(job.model, out, plan, qnames, feeds)
    job.model = None  # free the float graph before the measurement sessions load
    release_memory()
    measure(report, job.reference, out, fid, latency_runs, progress, ort_config, candidate_ours=True)
    slower = report.latency is not None and report.latency.ratio >= 1.0
    qdq = plan.decisions.get("weight_format", {}).get("value", "qdq") == "qdq"
    weight_only = config.scheme in (Scheme.W4A16, Scheme.W8A16)
    if weight_only and qdq and slower and not (ort_config or {}).get(NBITS_LEVEL):
        report.notes.append(
            "onnxruntime runs DequantizeLinear(int4) -> MatMul as MatMulNBits with int8 compute by default "
            f"(accuracy level 4), which can be slower than float compute: try session config {NBITS_LEVEL}=0 "
            "(measure with --ort-config)"
        )
    if layers is not None:
        report.layers = [vars(x) for x in sorted(layers, key=lambda x: -x.introduced)]


def _warnings(config: QuantConfig, model: onnx.ModelProto, plan: QuantPlan, calib_src: FeedSource | None) -> list[str]:
    """Options that would otherwise do nothing, silently, and a run that quantizes nothing."""
    out = [
        f"--exclude {p!r} matches no node name, op type or glob" for p in unmatched_excludes(config, model.graph.node)
    ]
    out += [f"{flag} does not apply to --scheme {config.scheme.value}; ignored" for flag in config.ignored_options()]
    data_aware = config.weight_algo != WeightAlgo.RTN or config.clip_search
    if config.scheme in (Scheme.W4A16, Scheme.W8A16) and calib_src is not None and not data_aware:
        out.append(
            f"--calib is not used by {config.scheme.value} rtn; its files serve fidelity (and --format auto's timing)"
        )
    if config.scheme == Scheme.DYNAMIC and calib_src is not None:
        out.append(
            "--calib is not used by --scheme dynamic (ranges are computed at run time); its files only serve fidelity"
        )
    return out + plan.warnings


def _upgrade_opset(model: onnx.ModelProto, config: QuantConfig) -> tuple[onnx.ModelProto, str | None]:
    """The opset the scheme's Q/DQ need. onnx's converter may add Constant nodes (Clip's min/max from opset
    11 on) and unnamed nodes: lifted and named like the input's own."""
    if config.scheme == Scheme.W8A8:
        need, why = (13, "per-channel Q/DQ") if config.per_channel else (10, "Q/DQ")
    elif config.scheme == Scheme.DYNAMIC:
        need, why = (13, "per-column DequantizeLinear") if config.per_channel else (11, "DynamicQuantizeLinear")
    elif config.weight_format == WeightFormat.ORT:
        return model, None  # com.microsoft MatMulNBits / GatherBlockQuantized: no standard opset needed
    else:
        need, why = 21, "block-wise DequantizeLinear"
    model, note = model_io.ensure_opset(model, need, why)
    if note:
        lift_constants(model)
        name_nodes(model.graph)
        # An IR version the new opset allows (IR < 4 also wanted every initializer listed as a graph input).
        ir = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        if model.ir_version < ir:
            note += f"; IR version {model.ir_version} -> {ir}"
            model.ir_version = ir
    return model, note


def _check_valid(model: onnx.ModelProto, source: Path) -> bool:
    """The output must pass onnx.checker's full check, or, when the input itself does not, the basic one.
    Returns whether the full check was applied."""
    try:
        model_io.check(model, True)
        return True
    except onnx.checker.ValidationError as full_error:
        try:
            onnx.checker.check_model(str(source), full_check=True)
            input_passes = True
        except onnx.checker.ValidationError:
            input_passes = False
        try:
            if input_passes:
                raise full_error
            model_io.check(model, False)
        except onnx.checker.ValidationError as e:
            raise InternalError(
                f"internal error: the quantized model fails onnx.checker ({str(e).splitlines()[0]}); "
                "please report it with the model, or retry with --exclude on the node named"
            ) from e
        return False


__all__ = ["quantize", "compare", "default_output", "QuantizeResult"]
