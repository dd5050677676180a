"""`--calibrator auto` (schemes/w8a8/ranges.py): ranges chosen by the error at the model's outputs, measured on
the held-aside files and some of the fitted ones; every candidate measured is in the report, the one written
is the best measured (by a margin over minmax), the cost is bounded, and too few held files give minmax."""

import shutil

import onnx
import pytest
from checks import batches_of, sqnr_on
from models import bn_dwsep, write_batches

from qcli import QuantConfig, quantize
from qcli.calibration.overrides import load as load_overrides
from qcli.report.render import render_markdown
from qcli.schemes.w8a8 import ranges
from qcli.steps import trials

SKIPPED = "2 calibration file(s) held aside; the search needs 3 (15 calibration files)"
BASE = {"reduce_range": False, "placement": "static", "accuracy_guard": False, "bias_correction": False}


@pytest.fixture(scope="module")
def dwsep(tmp_path_factory):
    """The BatchNorm-folded depthwise net: a few channels of each tensor reach tens of times the median
    channel's range, so one minmax range leaves the others a handful of levels."""
    d = tmp_path_factory.mktemp("dwsep")
    onnx.save(bn_dwsep(), d / "m.onnx")
    write_batches(d / "c", [(4, 3, 16, 16)] * 15, seed=1)
    write_batches(d / "e", [(4, 3, 16, 16)] * 4, seed=7)
    return d


def _q(d, out, **kw):
    return quantize(d / "m.onnx", QuantConfig.of(**{**BASE, **kw}), d / "c", d / out, latency_runs=1)


def test_the_ranges_written_are_the_candidates_measured_best_at_the_outputs(dwsep, monkeypatch):
    measured, searching = [], []
    real, real_search = trials.Trials.measure, ranges.search

    def measure(self, *a, **k):
        measured.append(bool(searching))  # True: by the range search
        return real(self, *a, **k)

    monkeypatch.setattr(trials.Trials, "measure", measure)

    def search(*a, **k):
        searching.append(1)
        try:
            return real_search(*a, **k)
        finally:
            searching.clear()

    monkeypatch.setattr(ranges, "search", search)
    r = _q(dwsep, "auto.onnx")
    s = r.report.calibration["search"]
    assert s["measured_on"] == "3 held-aside calibration file(s) and 8 of the 12 the ranges came from"
    assert set(s["bases"]) == set(ranges.BASES) and s["base"] == max(s["bases"], key=s["bases"].get)
    assert s["bases"][s["base"]] >= s["bases"]["minmax"] + ranges.BASE_GAIN_DB  # measured: p99.9 18.5, minmax 4.5
    assert f"auto ({s['base']} chosen at the outputs" in render_markdown(r.report)
    taken = {t: v["method"] for t, v in r.report.calibration["ranges"].items()}
    assert all(taken[t] == s["changed"].get(t, s["base"]) for t in taken)  # per tensor, the range taken
    # bounded: the bases, then at most TENSORS tensors x their other candidates; nothing else measures here
    assert sum(measured) <= len(ranges.BASES) + ranges.TENSORS * len(ranges.ALTERNATIVES)
    tried = [(t["tensor"], t["range"]) for t in s["tensors_tried"]]
    assert len(set(tried)) == len(tried) and all(r != s["base"] for _, r in tried)  # the base range is not again
    minmax = _q(dwsep, "minmax.onnx", calibrator="minmax")
    unseen = batches_of(dwsep / "e")
    assert sqnr_on(dwsep / "m.onnx", r.output, unseen) > sqnr_on(dwsep / "m.onnx", minmax.output, unseen) + 6


def test_a_per_tensor_override_is_not_searched(dwsep, tmp_path):
    (tmp_path / "o.toml").write_text('[tensors."x"]\ncalibrator = "minmax"\n')
    r = _q(dwsep, "ov.onnx", overrides=load_overrides(tmp_path / "o.toml"))
    assert r.report.calibration["ranges"]["x"]["method"] == "minmax"
    assert r.report.calibration["search"]["base"] != "minmax" and "x" not in r.report.calibration["search"]["changed"]


def test_with_fewer_than_three_held_files_every_range_is_minmax_and_the_report_says_why(dwsep, tmp_path):
    """10 files hold 2 aside: a choice among the candidates on 2 files would be noise; minmax is taken."""
    shutil.copy(dwsep / "m.onnx", tmp_path / "m.onnx")
    shutil.copytree(dwsep / "c", tmp_path / "c", ignore=lambda _, names: sorted(names)[10:])
    r, minmax = _q(tmp_path, "auto.onnx"), _q(tmp_path, "minmax.onnx", calibrator="minmax")
    assert r.report.calibration["search"] == {"skipped": SKIPPED, "base": "minmax"}
    assert f"auto (minmax: {SKIPPED}): 8 batches" in render_markdown(r.report)
    assert {v["method"] for v in r.report.calibration["ranges"].values()} == {"minmax"}
    assert r.plan.activations == minmax.plan.activations


def test_under_an_accuracy_target_measured_on_eval_the_skip_says_why_no_file_was_held(dwsep, tmp_path):
    config = QuantConfig.of(**{**BASE, "min_sqnr": 10.0})
    r = quantize(dwsep / "m.onnx", config, dwsep / "c", tmp_path / "t.onnx", dwsep / "e", latency_runs=1)
    said = r.report.calibration["search"]["skipped"]
    assert said.startswith("0 calibration file(s) held aside; the search needs 3") and said.endswith(
        "; none is held aside where an accuracy target is measured on --eval"
    ), said


def test_with_too_few_files_to_hold_any_aside_the_skip_gives_no_other_reason(dwsep, tmp_path):
    shutil.copy(dwsep / "m.onnx", tmp_path / "m.onnx")
    shutil.copytree(dwsep / "c", tmp_path / "c", ignore=lambda _, names: sorted(names)[4:])
    r = _q(tmp_path, "few.onnx")
    assert (
        r.report.calibration["search"]["skipped"]
        == "0 calibration file(s) held aside; the search needs 3 (15 calibration files)"
    )
