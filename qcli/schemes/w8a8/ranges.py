"""`--calibrator auto`: activation ranges chosen by the error they cause at the model's outputs.

Calibration keeps one histogram per activation, from which every candidate range follows (minmax, entropy,
mse, percentiles 99.999 / 99.99 / 99.9, and the per-tensor least-expected-error pick). A tensor's own error is
a poor guide: clipping a few large values can cost a tensor little and the outputs much, or the reverse. So
each candidate is tried at the outputs, on the held-aside calibration files, with ranges from the others:

1. one candidate for every tensor: the one whose model measures best (each held file's worst output,
   averaged in dB) is the base, if it beats minmax by MIN_GAIN_DB;
2. then, tensor by tensor, the activations that quantize worst on their own (at most TENSORS of them), each
   with its other candidates: a candidate is kept where the model measures better than before by MIN_GAIN_DB.

4 + 2 x TENSORS models are measured: bounded whatever the model's size. With fewer than MIN_FILES held-aside
files the choice would be noise (measured: MiniLM with 1 held file took p99.99, 4 dB better there and 2.2 dB
worse on the eval set), so every range is minmax and the report says why. The report's calibration has
`search` (every figure measured) and, per tensor, the method that set its range.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from onnx import ModelProto

from qcli.calibration.observers import TensorStats
from qcli.core.plan import QuantPlan
from qcli.io import model_io
from qcli.io.feeds import FidelityData
from qcli.measure.sensitivity import activation_sqnr
from qcli.steps.trials import trials, typical_sqnr, worst_sqnr

BASES = ("minmax", "p99.999", "p99.99", "p99.9")  # tried for every tensor at once
TENSORS = 3  # tensors refined one by one
ALTERNATIVES = ("minmax", "p99.99", "mse")  # tried for each of them
MIN_GAIN_DB = 0.5  # what a choice other than minmax must gain (a choice among many on a few files is noisy)
MIN_FILES = 3  # held-aside files the search needs (15 calibration files); with fewer, minmax

Plan = Callable[[dict[str, TensorStats]], QuantPlan]


@dataclass
class Searched:
    stats: dict[str, TensorStats]
    choice: dict[str, str]  # tensor -> candidate taken (those searched)
    record: dict

    def apply(self, other: dict[str, TensorStats] | None) -> dict[str, TensorStats] | None:
        """The same choice on other statistics of the same tensors (the ranges from every file)."""
        return None if other is None else _chosen(other, self.choice)


def search(
    model: ModelProto, plan: Plan, stats: dict[str, TensorStats], data: FidelityData, progress, session=None
) -> Searched:
    """The candidate per tensor that measures best at the outputs on `data`. `session`: one over `model` that
    outputs every activation (calibration's), else one is opened."""
    searched = {t for t, s in stats.items() if s.candidates}
    if len(data.items) < MIN_FILES or data.in_sample:
        record = {"skipped": f"{len(data.items)} held-aside file(s): the search needs {MIN_FILES}", "base": "minmax"}
        return Searched(_chosen(stats, dict.fromkeys(searched, "minmax")), dict.fromkeys(searched, "minmax"), record)
    advance = progress("range search (models tried)", None)
    with tempfile.TemporaryDirectory(prefix="qcli-ranges-") as tmp:
        reference = model_io.save_for_session(model, Path(tmp), "float.onnx")
        with trials(model, reference, data, advance) as t:

            def measure(choice: dict[str, str]) -> tuple[float, float]:
                fid = t.measure(plan(_chosen(stats, choice)))
                return typical_sqnr(fid), worst_sqnr(fid)

            bases = {b: measure(dict.fromkeys(searched, b)) for b in BASES}
            base = max(BASES, key=lambda b: bases[b][0])
            base = base if bases[base][0] >= bases["minmax"][0] + MIN_GAIN_DB else "minmax"
            choice, best = dict.fromkeys(searched, base), bases[base]
            tried = []
            for tensor in _weakest(model, plan(_chosen(stats, choice)), data, searched, session):
                for alt in (a for a in ALTERNATIVES if a != choice[tensor]):
                    figures = measure({**choice, tensor: alt})
                    tried.append({"tensor": tensor, "range": alt, "mean_file_worst_sqnr_db": round(figures[0], 2)})
                    if figures[0] >= best[0] + MIN_GAIN_DB:
                        choice, best = {**choice, tensor: alt}, figures
    record = {
        "measured_on": data.desc,
        "bases": {b: round(v[0], 2) for b, v in bases.items()},
        "base": base,
        "tensors_tried": tried,
        "changed": {k: v for k, v in choice.items() if v != base},
        "mean_file_worst_sqnr_db": round(best[0], 2),
    }
    return Searched(_chosen(stats, choice), choice, record)


def _chosen(stats: dict[str, TensorStats], choice: dict[str, str]) -> dict[str, TensorStats]:
    out = dict(stats)
    for tensor, name in choice.items():
        s = stats[tensor]
        if s.candidates and name in s.candidates:
            lo, hi = s.candidates[name]
            out[tensor] = replace(s, rmin=lo, rmax=hi, method=name)
    return out


def _weakest(model: ModelProto, plan: QuantPlan, data: FidelityData, searched: set[str], session) -> list[str]:
    """The searched activations that quantize worst on their own (each alone in the float model)."""
    acts = {t: a for t, a in plan.activations.items() if t in searched}
    alone = activation_sqnr(model, acts, FidelityData(data.src, data.items[:2], "").feeds(), session)
    return [t for t, _ in sorted(alone.items(), key=lambda kv: kv[1])[:TENSORS]]
