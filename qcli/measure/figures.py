"""What quantize() and compare() report of a candidate against its reference: size, fidelity, latency."""

from __future__ import annotations

from pathlib import Path

from qcli.core.progress import Progress, no_progress
from qcli.io.feeds import FidelityData
from qcli.measure import evaluate
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
) -> None:
    """Size, fidelity per output and interleaved latency of `cand` against `ref`, into `report`."""
    ref_size, cand_size = evaluate.file_size(ref), evaluate.file_size(cand)
    report.size = {"reference_bytes": ref_size, "candidate_bytes": cand_size, "ratio": cand_size / ref_size}
    if data.src is None:
        report.notes.append("no data given (--calib or --eval): fidelity and latency not measured")
        return
    advance = progress("evaluating", len(data.items))
    # One session pair for fidelity and latency: each model is loaded once.
    with evaluate.pair(ref, cand, ort_config, candidate_ours) as (ref_sess, cand_sess):
        report.fidelity = evaluate.fidelity(ref_sess, cand_sess, data.feeds(advance))
        report.fidelity_data = data.desc
        report.fidelity_files = [p.name for p in data.items]
        first = data.src.load(data.items[0])
        report.latency = evaluate.latency(ref_sess, cand_sess, first, runs=runs, on_run=progress("latency runs", runs))
    if ort_config:
        report.notes.append(
            "measured with onnxruntime session config " + ", ".join(f"{k}={v}" for k, v in ort_config.items())
        )
    if report.latency.ratio >= 1.0:
        report.notes.append(
            f"the quantized model is not faster than FP32 on this machine ({report.latency.ratio:.2f}x latency)"
        )
