"""`--calibrator auto` (schemes/w8a8/ranges.py): ranges chosen by the error at the model's outputs, measured on
the held-aside files; every candidate measured is in the report, the one written is the best measured, and
the cost is bounded."""

import numpy as np
import onnx
import pytest
from checks import batches_of, sqnr_on
from models import model_of, vi
from onnx import helper

from qcli import QuantConfig, quantize
from qcli.schemes.w8a8 import ranges
from qcli.steps import trials

BASE = {"reduce_range": False, "min_macs_per_conversion": 0, "placement": "static", "accuracy_guard": False}


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    """Conv -> Sigmoid on inputs with one spike of 40 per file (a hot pixel). The conv's output reaches +-20
    there, where the sigmoid is flat: a range that clips it loses nothing at the output and gains resolution
    everywhere else; clipping the input itself would lose the spike's response."""
    d = tmp_path_factory.mktemp("spiky")
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["y"], ["p"], name="sig"),
    ]
    onnx.save(
        model_of(
            nodes, [vi("x", ["N", 3, 16, 16])], [vi("p", ["N", 8, 16, 16])], {"w": w, "b": np.zeros(8, np.float32)}
        ),
        d / "m.onnx",
    )
    for folder, n in (("c", 15), ("e", 4)):
        (d / folder).mkdir()
        for i in range(n):
            x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
            x[rng.integers(4), rng.integers(3), rng.integers(16), rng.integers(16)] = 40.0
            np.save(d / folder / f"b{i:02d}.npy", x)
    return d


def _q(d, out, **kw):
    return quantize(d / "m.onnx", QuantConfig.of(**{**BASE, **kw}), d / "c", d / out, latency_runs=1)


def test_the_range_written_is_the_candidate_measured_best_at_the_outputs(spiky, monkeypatch):
    measured = []
    real = trials.Trials.measure
    monkeypatch.setattr(trials.Trials, "measure", lambda self, *a, **k: measured.append(1) or real(self, *a, **k))
    r = _q(spiky, "auto.onnx", calibrator="auto")
    s = r.report.calibration["search"]
    assert set(s["bases"]) == set(ranges.BASES) and s["base"] == max(s["bases"], key=s["bases"].get)
    assert s["bases"][s["base"]] > s["bases"]["minmax"]  # measured: p99.99 27.8 dB, minmax 27.1
    assert s["measured_on"] == "3 calibration file(s) held aside (ranges from the other 12)"
    taken = {t: v["method"] for t, v in r.report.calibration["ranges"].items()}
    assert all(taken[t] == s["changed"].get(t, s["base"]) for t in taken)  # per tensor, the range taken
    # bounded: the bases, then at most TENSORS tensors x their alternatives (+ the guard's and later steps')
    search = len(ranges.BASES) + ranges.TENSORS * (len(ranges.ALTERNATIVES) - 1)
    assert len(s["tensors_tried"]) <= ranges.TENSORS * len(ranges.ALTERNATIVES) and len(measured) <= search + 30
    minmax = _q(spiky, "minmax.onnx", calibrator="minmax")
    unseen = batches_of(spiky / "e")
    assert sqnr_on(spiky / "m.onnx", r.output, unseen) > sqnr_on(spiky / "m.onnx", minmax.output, unseen)


def test_a_per_tensor_override_is_not_searched(spiky, tmp_path):
    (tmp_path / "o.toml").write_text('[tensors."x"]\ncalibrator = "minmax"\n')
    from qcli.calibration.overrides import load as load_overrides

    r = _q(spiky, "ov.onnx", calibrator="auto", overrides=load_overrides(tmp_path / "o.toml"))
    assert r.report.calibration["ranges"]["x"]["method"] == "minmax" and r.plan.activations["x"].range[1] == 40.0
    assert "x" not in r.report.calibration["search"]["changed"]


def test_with_fewer_than_three_held_files_every_range_is_minmax_and_the_report_says_why(spiky, tmp_path):
    """10 files hold 2 aside: a choice among the candidates on 2 files would be noise; minmax is taken."""
    import shutil

    d = tmp_path
    shutil.copy(spiky / "m.onnx", d / "m.onnx")
    shutil.copytree(spiky / "c", d / "c", ignore=lambda _, names: sorted(names)[10:])
    r, minmax = _q(d, "auto.onnx"), _q(d, "minmax.onnx", calibrator="minmax")
    s = r.report.calibration["search"]
    assert s == {"skipped": "2 held-aside file(s): the search needs 3", "base": "minmax"}
    assert {v["method"] for v in r.report.calibration["ranges"].values()} == {"minmax"}
    assert r.plan.activations == minmax.plan.activations
