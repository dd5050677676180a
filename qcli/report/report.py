"""Report data: what quantize and compare found, and its JSON form (render.py draws it for people)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from qcli.core.errors import InputError
from qcli.measure.evaluate import Latency, OutputFidelity

# The report JSON's layout (docs/reports.md#schema): raised when a key changes meaning or goes; new keys do not.
SCHEMA_VERSION = 1


@dataclass
class Report:
    kind: str  # "quantize" | "compare"
    reference: str
    candidate: str
    status: str | None = None  # quantize: the verdict on the model written (verdict.py: ok, low-fidelity, ...)
    config: dict | None = None  # the effective configuration (see config.effective)
    decisions: dict = field(default_factory=dict)  # choices qcli made, with their reasons (reduce_range, ...)
    plan: dict | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # options that had no effect
    calibration: dict | None = None  # {"batches": n, "tensors": n, "method": ..., "ranges": {...}}
    size: dict | None = None  # {"reference_bytes", "candidate_bytes", "ratio"}
    latency: Latency | None = None
    fidelity: list[OutputFidelity] = field(default_factory=list)
    fidelity_data: str = ""
    fidelity_files: list[str] = field(default_factory=list)
    gates: list[dict] = field(default_factory=list)  # {"gate", "limit", "value", "passed"}
    float_for_speed: list[str] = field(default_factory=list)
    float_for_accuracy: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)  # per quantized activation, largest introduced error first
    target: dict | None = None  # the accuracy-target search: met, nodes back to float, steps, all-int8 cost
    guard: dict | None = None  # the default accuracy guard: all-int8 and final worst SQNR, layers checked
    placement: dict | None = None  # measured placement: the groups timed, the chosen plan's ratio to FP32
    verified: dict | None = None  # the range refit measured beside the decided plan on the held files
    bias_correction: dict | None = None  # W8A8's bias correction: applied or not, measured before and after
    weight_errors: dict | None = None  # weight-only: per weight, relative weight error and output error
    provenance: dict | None = None  # versions, CPU, command line, data hashes (provenance.py)
    recipe: dict | None = None  # raw data: the recipe it was read through, resolved, with its files' hashes
    accuracy: dict | None = None  # against labels: top-1/top-5 of both models and the drop (measure/accuracy.py)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "status": self.status,
            "reference": self.reference,
            "candidate": self.candidate,
            "config": self.config,
            "decisions": self.decisions,
            "warnings": self.warnings,
            "notes": self.notes,
            "calibration": self.calibration,
            "size": self.size,
            "latency": self.latency.to_dict() if self.latency else None,
            "fidelity_data": self.fidelity_data,
            "fidelity_files": self.fidelity_files,
            "outputs": [_clean({k: v for k, v in vars(f).items() if k != "batch_db"}) for f in self.fidelity],
            "layers": [_clean(x) for x in self.layers],
            "target": self.target,
            "guard": self.guard,
            "placement": self.placement,
            "verified": self.verified,
            "bias_correction": self.bias_correction,
            "weight_errors": self.weight_errors,
            "provenance": self.provenance,
            "recipe": self.recipe,
            "accuracy": self.accuracy,
            "gates": self.gates,
            "float_for_speed": self.float_for_speed,
            "float_for_accuracy": self.float_for_accuracy,
            "plan": self.plan,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}


def load_report(path: Path) -> dict:
    """A report qcli wrote, as its JSON dict; an error (exit 2) for anything else or a newer schema."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path} as a JSON report ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") not in ("quantize", "compare"):
        raise InputError(f'{path} is not a qcli report (no "kind": "quantize" or "compare")')
    version = doc.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InputError(
            f"{path} has report schema {version}; this qcli reads up to {SCHEMA_VERSION}: upgrade qcli to draw it"
        )
    for key, value in Report(doc["kind"], "", "").to_dict().items():  # the file is untrusted: its layout checked
        if isinstance(value, (list, dict)) and doc.get(key) is not None and not isinstance(doc[key], type(value)):
            shape = "a list" if isinstance(value, list) else "an object"
            raise InputError(f'{path} is not a report as qcli writes it: "{key}" should be {shape} (edited by hand?)')
    return doc
