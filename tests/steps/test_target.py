"""The accuracy target on quantize: the fewest layers back to float until the target holds on held-out data,
checked here by running the written model; unreachable targets write the best model and exit 1."""

import json

import numpy as np
import onnx
import pytest
from checks import batches_of, sqnr_on
from models import cnn, outlier_chain, write_batches
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.cli.app import app
from qcli.core.errors import GateFailed
from qcli.core.plan import Action, Why
from qcli.measure.layerwise import per_layer

BASE = {"reduce_range": False, "min_macs_per_conversion": 0, "accuracy_guard": False}


@pytest.fixture
def files(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(4, 3, 16, 16)] * 4, seed=1)
    write_batches(tmp_path / "e", [(4, 3, 16, 16)] * 3, seed=7)
    return tmp_path


def _q(tmp_path, **kw):
    config = QuantConfig.of(**{**BASE, **kw})
    return quantize(tmp_path / "m.onnx", config, tmp_path / "c", tmp_path / "q.onnx", tmp_path / "e", latency_runs=2)


def _measured(tmp_path):
    """Worst-output SQNR of q.onnx against m.onnx on e/, with Q/DQ run exactly as written."""
    return sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", batches_of(tmp_path / "e"), exact_qdq=True)


def test_target_met_with_the_fewest_nodes_back_to_float(files):
    plain = _q(files)
    base_db = _measured(files)
    int8 = {d.node for d in plain.plan.by_action(Action.INT8, Action.INT8_OUT_FLOAT)}
    goal = base_db + 2  # measured: 41.8 dB all-int8, 44.7 dB with conv1 and conv2 float
    r = _q(files, min_sqnr=goal)
    t = r.report.target
    assert t["met"] and t["returned_to_float"]
    back = set(t["returned_to_float"])
    assert back < int8 | {d.node for d in plain.plan.by_action(Action.PASSTHROUGH)}  # some, not all
    assert {d.node for d in r.plan.by_reason(Why.TARGET)} == back
    assert set(r.report.float_for_accuracy) == back  # the report names them with the accuracy-kept nodes
    assert _measured(files) >= goal  # the written model, measured here
    assert r.report.fidelity[0].sqnr_db >= goal
    steps = {s["units"]: s for s in t["steps"]}
    best = max(k for k, s in steps.items() if s["met"] and s["nodes_float"] == len(back))
    assert not steps[best - 1]["met"]  # one unit fewer was tried and falls short
    assert t["all_int8_size_bytes"] < r.report.size["candidate_bytes"]


def test_target_already_met_changes_nothing(files):
    plain = _q(files)
    r = _q(files, min_sqnr=_measured(files) - 1)
    assert r.report.target["met"] and r.report.target["returned_to_float"] == []
    assert r.plan.to_dict()["nodes"] == plain.plan.to_dict()["nodes"]


def test_unreachable_target_writes_the_best_model_and_exits_1(files):
    with pytest.raises(GateFailed, match="accuracy target not met") as e:
        _q(files, min_sqnr=200)
    assert not e.value.report.target["met"]
    assert (files / "q.onnx").exists() and (files / "q.onnx.report.json").exists()
    assert json.loads((files / "q.onnx.report.json").read_text())["target"]["met"] is False
    args = ["quantize", files / "m.onnx", "--calib", files / "c", "--eval", files / "e", "-o", files / "q2.onnx"]
    res = CliRunner().invoke(app, [str(a) for a in args + ["--min-sqnr", "200", "--min-macs", "0", "--json"]])
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout)["target"]["met"] is False and (files / "q2.onnx").exists()


def test_top1_target_on_class_scores(files):
    r = _q(files, max_top1_drop=0.0)
    t = r.report.target
    assert t["met"] and r.report.fidelity[0].top1_agreement == 1.0


def test_planted_outlier_layer_is_ranked_first_and_the_only_one_returned(tmp_path):
    onnx.save(outlier_chain(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(64, 64)] * 4, seed=1)
    write_batches(tmp_path / "e", [(64, 64)] * 3, seed=7)
    plain = _q(tmp_path)
    assert plain.report.float_for_accuracy == []  # the per-tensor guard does not see it
    assert _measured(tmp_path) < 1  # measured 0.0 dB: the output is destroyed
    feeds = [{"x": np.load(p)} for p in sorted((tmp_path / "e").iterdir())]
    layers = per_layer(tmp_path / "m.onnx", tmp_path / "q.onnx", lambda: iter(feeds))
    assert layers[0].tensor == "h3" and layers[0].introduced > 100 * layers[1].introduced  # mm3's output
    r = _q(tmp_path, min_sqnr=25)
    assert r.report.target["met"] and r.report.target["returned_to_float"] == ["mm3"]
    assert _measured(tmp_path) > 31  # measured 33.6 dB with only mm3 float
    res = CliRunner().invoke(
        app,
        ["compare", str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), "--data", str(tmp_path / "e")]
        + ["--per-layer", "--json", "--runs", "1"],
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["layers"][0]["tensor"] != "h3"  # mm3 is float now


def test_search_doubles_then_bisects_to_the_fewest_units(monkeypatch, tmp_path):
    """The search alone, with a stand-in model whose SQNR rises 3 dB per unit back to float: 25 dB needs 5."""
    import qcli.steps.target as T
    import qcli.steps.trials as TR
    from qcli.core.plan import NodeDecision, QuantPlan
    from qcli.io.feeds import FidelityData
    from qcli.measure.evaluate import Latency, OutputFidelity

    units = [[f"n{i}"] for i in range(10)]
    current = {}
    monkeypatch.setattr(TR.Trials, "rank_units", lambda *a: units)
    monkeypatch.setattr(TR, "apply_unscaled", lambda model, plan, scaling: (plan, {}))

    def save(plan, folder, name):
        current["plan"] = plan
        return folder / name

    def fidelity(ref, path, feeds, candidate_ours):
        return [OutputFidelity("y", 10.0 + 3 * len(current["plan"].by_reason(Why.TARGET)), 1.0, 0.0, None)]

    monkeypatch.setattr(TR.model_io, "save_for_session", save)
    monkeypatch.setattr(T.evaluate, "fidelity", fidelity)
    monkeypatch.setattr(TR, "_recording", lambda ref, data, own: ref)
    monkeypatch.setattr(T.evaluate, "latency", lambda *a, **k: Latency(1.0, 0.5, 1))
    monkeypatch.setattr(T.evaluate, "file_size", lambda p: 100)

    def replan(more):
        return QuantPlan("w8a8", nodes=[NodeDecision(n, "MatMul", Action.FLOAT, r) for n, r in more.items()])

    class Src:
        def load(self, item):
            return {}

    fid = FidelityData(Src(), [tmp_path / "a.npy"], "held aside")
    found = T.search(None, tmp_path / "ref.onnx", QuantPlan("w8a8"), replan, T.AccuracyTarget(min_sqnr=25), fid)
    assert found.met and found.returned == ["n0", "n1", "n2", "n3", "n4"]
    assert [s.k for s in found.steps] == [0, 1, 2, 4, 8, 6, 5]
    assert [s.met for s in found.steps] == [False, False, False, False, True, True, True]
    unreachable = T.search(None, tmp_path / "r.onnx", QuantPlan("w8a8"), replan, T.AccuracyTarget(min_sqnr=99), fid)
    assert not unreachable.met and len(unreachable.returned) == 10  # the most accurate plan tried: all units
    assert "< --min-sqnr 99" in unreachable.shortfall
