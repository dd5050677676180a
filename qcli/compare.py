"""compare(): two versions of a model on the same data; the measurements quantize() reports too; CI gates."""

from __future__ import annotations

from pathlib import Path

from qcli.core.config import check_limits
from qcli.core.errors import GateFailed, InputError
from qcli.core.progress import Progress, no_progress
from qcli.io import model_io
from qcli.io.feeds import FidelityData, conversion_notes, input_specs, source_warnings, synthetic_feed
from qcli.io.recipes import data_recipe, open_source
from qcli.measure import evaluate, layerwise, size
from qcli.measure.accuracy import AccuracyMeter
from qcli.measure.layers import PER_LAYER_NOTE
from qcli.report.provenance import provenance
from qcli.report.report import Report


def measure(
    report: Report,
    ref: Path,
    cand: Path,
    data: FidelityData,
    runs: int,
    progress: Progress = no_progress,
    ort_config: dict[str, str] | None = None,
    candidate_ours: bool = False,
    spec_latency: bool = False,
) -> None:
    """Size, fidelity per output and interleaved latency of `cand` against `ref`, into `report`; without data,
    size only, or with spec_latency size and latency on an input made from the input specs."""
    ref_size, cand_size = evaluate.file_size(ref), evaluate.file_size(cand)
    report.size = {"reference_bytes": ref_size, "candidate_bytes": cand_size, "ratio": cand_size / ref_size}
    report.size["breakdown"] = {"reference": size.breakdown(ref), "candidate": size.breakdown(cand)}
    if data.src is None:
        if not spec_latency:
            report.notes.append("no data given (--calib or --eval): fidelity and latency not measured")
            return
        feed = synthetic_feed(input_specs(model_io.load(ref, weights=False)))
        with evaluate.pair(ref, cand, ort_config, candidate_ours) as (ref_sess, cand_sess):
            report.latency = evaluate.latency(
                ref_sess, cand_sess, feed, runs=runs, on_run=progress("latency runs", runs)
            )
        report.notes.append(
            "no --data: fidelity not measured; latency on one input made from the input specs (dynamic dimensions "
            "1 for the first, 32 for the others)"
        )
        return
    advance = progress("evaluating", len(data.items))
    # One session pair for fidelity and latency: each model is loaded once.
    labels = data.labels()
    meter = AccuracyMeter(labels) if labels is not None else None
    with evaluate.pair(ref, cand, ort_config, candidate_ours) as (ref_sess, cand_sess):
        on_batch = meter.add if meter else None
        report.fidelity = evaluate.fidelity(ref_sess, cand_sess, data.feeds(advance), on_batch=on_batch)
        scored = meter.result() if meter else None
        report.accuracy = scored | {"labels": data.src.labels_from} if scored else None
        report.fidelity_data = data.desc
        report.notes.append(class_score_note(ref, [f.name for f in report.fidelity]))
        report.fidelity_files = [p.name for p in data.items]
        first = data.src.load(data.items[0])
        report.latency = evaluate.latency(ref_sess, cand_sess, first, runs=runs, on_run=progress("latency runs", runs))
    unmeasured = data.src.unlabelled or (meter.unscorable if meter else None)
    if unmeasured:
        report.notes.append(f"{UNMEASURED}: {unmeasured}")
    if ort_config:
        report.notes.append(
            "measured with onnxruntime session config " + ", ".join(f"{k}={v}" for k, v in ort_config.items())
        )
    if report.latency.ratio >= 1.0:
        report.notes.append(
            f"the quantized model is not faster than FP32 on this machine ({report.latency.ratio:.2f}x latency)"
        )


UNMEASURED = "accuracy against labels not measured"


def apply_gates(
    report: Report, min_sqnr: float | None, max_top1_drop: float | None, max_accuracy_drop: float | None = None
) -> None:
    """Add each requested gate's verdict to the report; the worst output decides."""
    if max_accuracy_drop is not None:
        why = next((n for n in report.notes if n.startswith(UNMEASURED)), None)
        if report.accuracy is None and why:  # labels given, but not usable: say why
            raise InputError(f"--max-accuracy-drop: {why}")
        if report.accuracy is None:
            raise InputError(
                "--max-accuracy-drop needs labels: class folders (DIR/<class>/...) read through a recipe, "
                "or a labels.npy beside .npy batches (one integer per sample)"
            )
        drop = report.accuracy["top1"]["drop_pct"]
        report.gates.append(
            {
                "gate": "max-accuracy-drop",
                "limit": max_accuracy_drop,
                "value": drop,
                "passed": drop <= max_accuracy_drop,
            }
        )
    if min_sqnr is not None:
        worst = min(f.sqnr_db for f in report.fidelity)
        report.gates.append(
            {"gate": "min-sqnr", "limit": min_sqnr, "value": round(worst, 2), "passed": bool(worst >= min_sqnr)}
        )
    if max_top1_drop is not None:
        agreements = [f.top1_agreement for f in report.fidelity if f.top1_agreement is not None]
        if not agreements:
            raise InputError(
                "--max-top1-drop needs a class-score output ([N, C], or [N, T, C] from a (Log)Softmax); "
                f"none of {', '.join(f.name for f in report.fidelity)} is one: use --min-sqnr"
            )
        drop = (1.0 - min(agreements)) * 100
        report.gates.append(
            {
                "gate": "max-top1-drop",
                "limit": max_top1_drop,
                "value": round(drop, 4),
                "passed": bool(drop <= max_top1_drop),
            }
        )


def compare(
    ref: Path,
    cand: Path,
    data: Path | None,
    min_sqnr: float | None = None,
    max_top1_drop: float | None = None,
    latency_runs: int = 30,
    progress: Progress = no_progress,
    ort_config: dict[str, str] | None = None,
    per_layer: bool = False,
    command: str | None = None,
    recipe: Path | None = None,
    max_accuracy_drop: float | None = None,
    skip_bad_files: bool = False,
) -> Report:
    """Measure `cand` against `ref` on `data`. Raises GateFailed (with the report) when a gate fails.
    per_layer: also rank the layers by the error each adds (tensors matched by name). Without data: size, and
    latency on an input made from the input specs."""
    check_limits(min_sqnr, max_top1_drop, max_accuracy_drop)
    ref, cand = Path(ref), Path(cand)
    if data is None:
        return _without_data(
            ref,
            cand,
            latency_runs,
            progress,
            ort_config,
            command,
            dict(
                min_sqnr=min_sqnr, max_top1_drop=max_top1_drop, max_accuracy_drop=max_accuracy_drop, per_layer=per_layer
            ),
        )
    graph = model_io.load(ref, weights=False)  # the graphs only: the sessions load the weights
    ref_specs = input_specs(graph)
    cand_specs = input_specs(model_io.load(cand, weights=False))
    # Data that fits the reference but not the candidate is the user's to fix: checked on every batch.
    meta = {p.key: p.value for p in graph.metadata_props}
    named = (ref.name, cand.name) if ref.name != cand.name else (str(ref), str(cand))  # a/model.onnx, b/model.onnx
    also = ((named[1], cand_specs),)
    src = open_source(data, ref_specs, ref, recipe, also=also, metadata=meta, skip_bad=skip_bad_files, name=named[0])
    src.check()
    report = Report("compare", str(ref), str(cand))
    report.provenance = provenance({"evaluation": list(src.items)}, command)
    report.recipe = data_recipe(src)
    fid = FidelityData(src, src.items, f"{data} ({len(src.items)} batches)")
    measure(report, ref, cand, fid, latency_runs, progress, ort_config)
    report.notes += conversion_notes(src)
    report.warnings += source_warnings(src)
    if per_layer:
        advance = progress("per-layer pass", None)
        layers = layerwise.per_layer(ref, cand, lambda: FidelityData(src, src.items, "").feeds(advance))
        report.layers = [x.to_dict() for x in layers]
        if layers:
            report.notes.append(PER_LAYER_NOTE)
        if not layers:
            report.notes.append("--per-layer: no float tensor of the reference has a float namesake in the candidate")
    apply_gates(report, min_sqnr, max_top1_drop, max_accuracy_drop)
    failed = [g for g in report.gates if not g["passed"]]
    if failed:
        g = failed[0]
        raise GateFailed(f"{g['gate']}: {g['value']} against a limit of {g['limit']}", report)
    return report


def _without_data(ref: Path, cand: Path, runs: int, progress, ort_config, command, asked: dict) -> Report:
    wanted = [k.replace("_", "-") for k, v in asked.items() if v]
    if wanted:
        raise InputError(f"--{wanted[0]} needs evaluation data: pass --data DIR")
    model_io.load(cand, weights=False)  # a readable model, or a clear error
    report = Report("compare", str(ref), str(cand))
    report.provenance = provenance({"evaluation": []}, command)
    measure(report, ref, cand, FidelityData(None, [], "none"), runs, progress, ort_config, spec_latency=True)
    return report


def class_score_note(ref: Path, outputs: list[str]) -> str:
    """Which outputs top-1 agreement (and --max-top1-drop) is measured on, and why."""
    scores = evaluate.class_scores(ref)
    if not scores:
        return "top-1 agreement not measured: no output holds class scores (a [N, C] classifier head or softmax)"
    others = [o for o in outputs if o not in scores]
    on = ", ".join(f"{k} ({v})" for k, v in scores.items())
    return f"top-1 agreement on the class-score output(s) {on}" + (f"; not on {', '.join(others)}" if others else "")
