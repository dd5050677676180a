"""compare(): two versions of a model on the same data; the measurements quantize() reports too; CI gates."""

from __future__ import annotations

from pathlib import Path

from qcli.core.errors import GateFailed, InputError
from qcli.core.progress import Progress, no_progress
from qcli.io import model_io
from qcli.io.feeds import FeedSource, FidelityData, input_specs
from qcli.measure import layerwise
from qcli.measure.figures import measure
from qcli.report.provenance import provenance
from qcli.report.report import Report


def apply_gates(report: Report, min_sqnr: float | None, max_top1_drop: float | None) -> None:
    """Add each requested gate's verdict to the report; the worst output decides."""
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
    data: Path,
    min_sqnr: float | None = None,
    max_top1_drop: float | None = None,
    latency_runs: int = 30,
    progress: Progress = no_progress,
    ort_config: dict[str, str] | None = None,
    per_layer: bool = False,
    command: str | None = None,
) -> Report:
    """Measure `cand` against `ref` on `data`. Raises GateFailed (with the report) when a gate fails.
    per_layer: also rank the layers by the error each adds (tensors matched by name)."""
    ref, cand = Path(ref), Path(cand)
    ref_specs = input_specs(model_io.load(ref, weights=False))  # the graphs only: the sessions load the weights
    cand_specs = input_specs(model_io.load(cand, weights=False))
    # Data that fits the reference but not the candidate is the user's to fix: checked on every batch.
    src = FeedSource(data, ref_specs, model=ref.name, also=((cand.name, cand_specs),))
    report = Report("compare", str(ref), str(cand))
    report.provenance = provenance({"evaluation": list(src.items)}, command)
    fid = FidelityData(src, src.items, f"{data} ({len(src.items)} batches)")
    measure(report, ref, cand, fid, latency_runs, progress, ort_config)
    if per_layer:
        advance = progress("per-layer pass", None)
        layers = layerwise.per_layer(ref, cand, lambda: FidelityData(src, src.items, "").feeds(advance))
        report.layers = [x.to_dict() for x in layers]
        if not layers:
            report.notes.append("--per-layer: no float tensor of the reference has a float namesake in the candidate")
    apply_gates(report, min_sqnr, max_top1_drop)
    failed = [g for g in report.gates if not g["passed"]]
    if failed:
        g = failed[0]
        raise GateFailed(f"{g['gate']}: {g['value']} against a limit of {g['limit']}", report)
    return report
