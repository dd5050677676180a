"""`--calibrator auto`: activation ranges chosen by the error they cause at the model's outputs.

Calibration keeps one histogram per activation, from which every candidate range follows (minmax, mse,
percentiles 99.999 / 99.99 / 99.9). A tensor's own error is a poor guide: clipping a few large values can cost
a tensor little and the outputs much, or the reverse. So each candidate is tried at the outputs, measured on
the held-aside calibration files and FITTED of the files the ranges came from (search_data), ranges from the
latter:

1. one candidate for every tensor: the one whose model measures best is the base, if it beats minmax by
   BASE_GAIN_DB. A model's score is the lower of two figures of the worst output on those files: pooled
   over the files, and each file's averaged in dB. Clipping that spares most files and ruins the ones with
   large values looks good on the average only (on the benchmark's YOLOX-style detector p99.99 gained 0.6 dB
   there, and lost 12 dB on the eval files); a file at another scale sets the pooled figure alone;
2. then, tensor by tensor, the activations that quantize worst on their own (at most TENSORS of them), each
   with its other candidates: a candidate is kept where the model measures better than before by MIN_GAIN_DB.

At most 4 + 3 x TENSORS models are measured: bounded whatever the model's size. With fewer than MIN_FILES held-aside
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
# What a choice must gain over the one before (a choice among several on a dozen files is noisy: on the
# YOLOX-style detector p99.999 measured 1.0 dB better than minmax there, and 4 dB worse on the eval files)
BASE_GAIN_DB = 1.5  # the base over minmax
MIN_GAIN_DB = 1.0  # one tensor's candidate over the model before
MIN_FILES = 3  # held-aside files the search needs (15 calibration files); with fewer, minmax
FITTED = 8  # calibration files (in the ranges) measured beside the held ones

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
    model: ModelProto,
    plan: Plan,
    stats: dict[str, TensorStats],
    data: FidelityData,
    progress,
    session=None,
    why_none: str = "",
) -> Searched:
    """The candidate per tensor that measures best at the outputs on `data`. `session`: one over `model` that
    outputs every activation (calibration's), else one is opened. `why_none`: why no file was held aside,
    where the caller knows a reason beyond their number."""
    searched = {t for t, s in stats.items() if s.candidates}
    if len(data.items) < MIN_FILES or data.in_sample:
        held = len(data.items)
        why = f"{held} calibration file(s) held aside; the search needs {MIN_FILES} ({5 * MIN_FILES} calibration files)"
        if not held and why_none:
            why += f"; {why_none}"
        record = {"skipped": why, "base": "minmax"}
        return Searched(_chosen(stats, dict.fromkeys(searched, "minmax")), dict.fromkeys(searched, "minmax"), record)
    advance = progress("range search (models tried)", None)
    with tempfile.TemporaryDirectory(prefix="qcli-ranges-") as tmp:
        reference = model_io.save_for_session(model, Path(tmp), "float.onnx")
        with trials(model, reference, data, advance) as t:

            def measure(choice: dict[str, str]) -> float:
                fid = t.measure(plan(_chosen(stats, choice)))
                return min(typical_sqnr(fid), worst_sqnr(fid))

            bases = {b: measure(dict.fromkeys(searched, b)) for b in BASES}
            base = max(BASES, key=lambda b: bases[b])
            base = base if bases[base] >= bases["minmax"] + BASE_GAIN_DB else "minmax"
            choice, best = dict.fromkeys(searched, base), bases[base]
            tried = []
            for tensor in _weakest(model, plan(_chosen(stats, choice)), data, searched, session):
                # listed now: a win does not bring back the range it replaced
                for alt in [a for a in ALTERNATIVES if a != choice[tensor]]:
                    figure = measure({**choice, tensor: alt})
                    tried.append({"tensor": tensor, "range": alt, "score_db": round(figure, 2)})
                    if figure >= best + MIN_GAIN_DB:
                        choice, best = {**choice, tensor: alt}, figure
    record = {
        "measured_on": data.desc,
        "bases": {b: round(v, 2) for b, v in bases.items()},
        "base": base,
        "tensors_tried": tried,
        "changed": {k: v for k, v in choice.items() if v != base},
        "score_db": round(best, 2),
    }
    return Searched(_chosen(stats, choice), choice, record)


def search_data(src, items: list, held: list) -> FidelityData:
    """The held-aside files and up to FITTED of the files the ranges were fitted on: a candidate that clips
    must also pay for the values it clips where they occur (a few held files rarely hold the extremes it
    clips; measured on the YOLOX-style detector with 4 held files, p99.999 looked 0.7 dB better than minmax
    and lost 4 dB on the eval files)."""
    fitted = items[:FITTED] if len(held) >= MIN_FILES else []
    desc = f"{len(held)} held-aside calibration file(s) and {len(fitted)} of the {len(items)} the ranges came from"
    return FidelityData(src, held + fitted, desc)


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
