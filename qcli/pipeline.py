"""quantize() and compare(): load -> preprocess -> calibrate -> plan -> rewrite -> save -> evaluate -> report."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from . import evaluate, model_io
from .calibrate import calibrate
from .config import QuantConfig, Scheme
from .diagnose import layer_errors
from .errors import InputError, InternalError
from .feeds import FeedSource, input_specs
from .hostcpu import u8s8_may_saturate
from .passes.int4 import apply_w4a16
from .passes.preprocess import preprocess
from .passes.qdq import apply_w8a8
from .plan import Action, QuantPlan
from .plan_w4a16 import plan_w4a16
from .plan_w8a8 import W8A8Planner
from .report import Report
from .sensitivity import activation_sqnr

NBITS_LEVEL = "session.qdq_matmulnbits_accuracy_level"
LAYER_BATCHES = 4  # evaluation batches used for the per-layer error table
SENSITIVITY_BATCHES = 4  # calibration batches for the accuracy guard's second pass
Progress = Callable[[str, int], Callable[[], None]]  # (task description, total) -> advance()


def _no_progress(desc: str, total: int) -> Callable[[], None]:
    return lambda: None


@dataclass
class QuantizeResult:
    plan: QuantPlan
    report: Report
    output: Path | None


def default_output(model: Path, scheme: Scheme) -> Path:
    suffix = ".int8.onnx" if scheme == Scheme.W8A8 else ".int4.onnx"
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
    progress: Progress = _no_progress,
    latency_runs: int = 30,
    ort_config: dict[str, str] | None = None,
) -> QuantizeResult:
    model_path = Path(model_path)
    out = Path(out) if out else default_output(model_path, config.scheme)
    _check_paths(model_path, out)
    original = model_io.load(model_path)
    specs = input_specs(original)
    model, notes = preprocess(original, config.fold_batchnorm, inplace=True)  # one copy in memory, not two
    del original
    _name_nodes(model)
    calib_src = FeedSource(calib, specs, config.calib_limit) if calib else None
    eval_src = FeedSource(eval_dir, specs) if eval_dir else None
    if config.scheme == Scheme.W8A8:
        model, plan, calibration, fid = _plan_w8a8(model, config, calib_src, eval_src, progress)
    else:
        model, plan, calibration, fid = _plan_w4a16(model, config, calib_src, eval_src)
    plan.notes += notes
    report = Report(
        "quantize",
        str(model_path),
        str(out),
        config=config.to_dict(),
        plan=plan.to_dict(),
        notes=list(plan.notes),
        calibration=calibration,
    )
    report.float_for_speed = [d.node for d in plan.by_action(Action.FLOAT) if d.reason.startswith("kept float")]
    if dry_run:
        return QuantizeResult(plan, report, None)
    qnames: dict[str, str] = {}
    if config.scheme == Scheme.W8A8:
        qmodel, qnames = apply_w8a8(model, plan)
    else:
        qmodel = apply_w4a16(model, plan, inplace=True)  # the float graph is not needed after this
    if not _check_valid(qmodel, model_path):
        report.notes.append(
            "the input model does not pass onnx.checker's full check; output checked at "
            "the basic level the input passes"
        )
    model_io.save_atomic(qmodel, out)
    if not qnames:  # only the per-layer diagnosis needs the graphs again: free them before the sessions load
        del qmodel, model
    _measure(report, model_path, out, fid.src, fid.items, fid.desc, latency_runs, progress, ort_config)
    if config.scheme == Scheme.W4A16 and u8s8_may_saturate() and not (ort_config or {}).get(NBITS_LEVEL):
        report.notes.append(
            "onnxruntime runs DequantizeLinear(int4) -> MatMul as MatMulNBits with int8 compute by default "
            f"(accuracy level 4); on CPUs without VNNI float compute can be faster: session config {NBITS_LEVEL}=0 "
            "(measure with --ort-config)"
        )
    if qnames and fid.src is not None:
        layers = layer_errors(model, qmodel, plan, qnames, (fid.src.load(i) for i in fid.items[:LAYER_BATCHES]))
        report.layers = [vars(x) for x in sorted(layers, key=lambda x: -x.introduced)]
    return QuantizeResult(plan, report, out)


@dataclass(frozen=True)
class _FidelityData:
    """Where the report's fidelity and latency figures come from."""

    src: FeedSource | None
    items: list[Path]
    desc: str


def _plan_w8a8(
    model, config: QuantConfig, calib_src: FeedSource | None, eval_src: FeedSource | None, progress: Progress
):
    if calib_src is None:
        raise InputError(
            "W8A8 static quantization needs calibration data: pass --calib DIR "
            "(or use --scheme w4a16 for weight-only quantization without data)"
        )
    model, note = model_io.ensure_opset(model, 13 if config.per_channel else 10, "per-channel Q/DQ")
    items, held = calib_src.items, []
    if eval_src is None and len(items) >= 5:  # hold a fifth aside to measure fidelity on unseen data
        cut = max(1, len(items) // 5)
        items, held = items[:-cut], items[-cut:]
    planner = W8A8Planner(model, config, model_io.float_tensors(model))
    advance = progress("calibrating", len(items))
    stats = calibrate(model, planner.watch_list(), (calib_src.load(i) for i in items), config.calibrator.value, advance)
    calibration = {
        "method": config.calibrator.value,
        "batches": len(items),
        "tensors": len(stats),
        "ranges": {k: v.to_dict() for k, v in stats.items()},
    }
    plan = planner.plan(stats)
    if config.min_activation_sqnr > 0:  # accuracy guard: a short second pass with the planned parameters
        act_sqnr = activation_sqnr(model, plan.activations, (calib_src.load(i) for i in items[:SENSITIVITY_BATCHES]))
        if any(v < config.min_activation_sqnr for v in act_sqnr.values()):
            plan = planner.plan(stats, act_sqnr)
        calibration["activation_sqnr_db"] = {k: round(v, 2) for k, v in act_sqnr.items() if v != float("inf")}
    plan.notes += [note] if note else []
    if eval_src:
        fid = _FidelityData(eval_src, eval_src.items, f"--eval {eval_src.folder} ({len(eval_src.items)} batches)")
    elif held:
        fid = _FidelityData(calib_src, held, f"{len(held)} calibration file(s) held aside")
    else:
        fid = _FidelityData(
            calib_src, items, f"the {len(items)} calibration file(s) themselves (fewer than 5: none held aside)"
        )
    return model, plan, calibration, fid


def _plan_w4a16(model, config: QuantConfig, calib_src: FeedSource | None, eval_src: FeedSource | None):
    model, note = model_io.ensure_opset(model, 21, "int4 block-wise DequantizeLinear")
    plan = plan_w4a16(model, config)
    plan.notes += [note] if note else []
    src = eval_src or calib_src
    if src is None:
        return model, plan, None, _FidelityData(None, [], "")
    flag = "--eval" if eval_src else "--calib"
    return model, plan, None, _FidelityData(src, src.items, f"{flag} {src.folder} ({len(src.items)} batches)")


def _name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _checker(model: onnx.ModelProto, full: bool) -> None:
    if model_io.model_bytes(model) > model_io.EXTERNAL_DATA_THRESHOLD:
        with tempfile.TemporaryDirectory() as tmp:
            onnx.checker.check_model(str(model_io.save_for_session(model, Path(tmp))), full_check=full)
    else:
        onnx.checker.check_model(model, full_check=full)


def _check_valid(model: onnx.ModelProto, source: Path) -> bool:
    """The output must pass onnx.checker's full check, or, when the input itself does not, the basic one.
    Returns whether the full check was applied."""
    try:
        _checker(model, True)
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
            _checker(model, False)
        except onnx.checker.ValidationError as e:
            raise InternalError(
                f"internal error: the quantized model fails onnx.checker ({str(e).splitlines()[0]}); "
                "please report it with the model, or retry with --exclude on the node named"
            ) from e
        return False


def _measure(
    report: Report,
    ref: Path,
    cand: Path,
    src: FeedSource | None,
    items: list,
    desc: str,
    runs: int,
    progress: Progress,
    ort_config: dict[str, str] | None = None,
) -> None:
    ref_size, cand_size = evaluate.file_size(ref), evaluate.file_size(cand)
    report.size = {"reference_bytes": ref_size, "candidate_bytes": cand_size, "ratio": cand_size / ref_size}
    if src is None:
        report.notes.append("no data given (--calib or --eval): fidelity and latency not measured")
        return
    advance = progress("evaluating", len(items))

    def feeds():
        for item in items:
            yield src.load(item)
            advance()

    report.fidelity = evaluate.fidelity(ref, cand, feeds(), ort_config)
    report.fidelity_data = desc
    report.latency = evaluate.latency(ref, cand, src.load(items[0]), runs=runs, config=ort_config)
    if ort_config:
        report.notes.append(
            "measured with onnxruntime session config " + ", ".join(f"{k}={v}" for k, v in ort_config.items())
        )
    if report.latency.ratio >= 1.0:
        report.notes.append(
            f"the quantized model is not faster than FP32 on this machine ({report.latency.ratio:.2f}x latency)"
        )


def compare(
    ref: Path,
    cand: Path,
    data: Path,
    min_sqnr: float | None = None,
    max_top1_drop: float | None = None,
    latency_runs: int = 30,
    progress: Progress = _no_progress,
    ort_config: dict[str, str] | None = None,
) -> Report:
    ref, cand = Path(ref), Path(cand)
    ref_model = model_io.load(ref)
    model_io.load(cand)
    specs = input_specs(ref_model)
    src = FeedSource(data, specs)
    report = Report("compare", str(ref), str(cand))
    _measure(
        report, ref, cand, src, src.items, f"{data} ({len(src.items)} batches)", latency_runs, progress, ort_config
    )
    if min_sqnr is not None:
        worst = min(f.sqnr_db for f in report.fidelity)
        report.gates.append(
            {"gate": "min-sqnr", "limit": min_sqnr, "value": round(worst, 2), "passed": bool(worst >= min_sqnr)}
        )
    if max_top1_drop is not None:
        agreements = [f.top1_agreement for f in report.fidelity if f.top1_agreement is not None]
        if not agreements:
            raise InputError("--max-top1-drop needs a class-score output ([N, C] or [N, T, C]); none found")
        drop = (1.0 - min(agreements)) * 100
        report.gates.append(
            {
                "gate": "max-top1-drop",
                "limit": max_top1_drop,
                "value": round(drop, 2),
                "passed": bool(drop <= max_top1_drop),
            }
        )
    return report


__all__ = ["quantize", "compare", "default_output", "QuantizeResult"]
