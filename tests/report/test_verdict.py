"""The verdict on the model written: no low-fidelity or float-only model passes for a plain success. The rule at
its boundaries on hand-made figures, then quantize and the CLI on a model whose output collapses without the
accuracy guard, and on one where nothing is quantized."""

import json

import pytest
from models import mlp, outlier_chain, save_with_data
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.cli.app import app
from qcli.core.errors import GateFailed
from qcli.core.plan import ActivationQuant, QuantPlan
from qcli.measure.evaluate import OutputFidelity
from qcli.report.report import Report
from qcli.report.verdict import FLOOR_AGREEMENT, FLOOR_DB, Status, verdict

QUANTIZED = QuantPlan("w8a8", activations={"h": ActivationQuant("h", 0.1, 128, "uint8")})


def _report(sqnr_db=35.0, top1=None, target=None) -> Report:
    r = Report("quantize", "m.onnx", "q.onnx", fidelity_data="2 calibration file(s) held aside", target=target)
    r.fidelity = [OutputFidelity("y", sqnr_db, 0.99, 0.1, top1)]
    return r


@pytest.mark.parametrize(
    ("sqnr_db", "top1", "status"),
    [
        (FLOOR_DB, None, Status.OK),  # at the floor: enough
        (FLOOR_DB - 0.01, None, Status.LOW_FIDELITY),
        (40.0, FLOOR_AGREEMENT, Status.OK),
        (40.0, FLOOR_AGREEMENT - 0.001, Status.LOW_FIDELITY),  # class agreement counts alone
        (40.0, None, Status.OK),
    ],
)
def test_the_floors_at_their_boundaries(sqnr_db, top1, status):
    v = verdict(_report(sqnr_db, top1), QUANTIZED, targeted=False)
    assert v.status == status and v.failed == (status == Status.LOW_FIDELITY)
    if status == Status.LOW_FIDELITY:
        assert "below the" in v.line and "on 2 calibration file(s) held aside" in v.line
        assert "try --min-sqnr 20" in v.line


def test_the_line_names_the_worst_output_and_its_figure():
    v = verdict(_report(11.84), QUANTIZED, targeted=False)
    assert v.line.startswith("worst output y 11.8 dB on 2 calibration file(s) held aside, below the 20 dB floor")
    agreement = verdict(_report(30.0, 0.956), QUANTIZED, targeted=False).line
    assert agreement.startswith("output y keeps its top-1 class on 95.6% of rows") and "97% floor" in agreement


def test_a_target_decides_what_is_enough_and_no_data_is_unmeasured():
    assert verdict(_report(12.0), QUANTIZED, targeted=True).status == Status.OK
    unmeasured = _report()
    unmeasured.fidelity = []
    v = verdict(unmeasured, QUANTIZED, targeted=False)
    assert v.status == Status.UNMEASURED and v.line is None and not v.failed


def test_a_float_model_is_never_a_plain_success():
    empty = QuantPlan("w8a8")
    v = verdict(_report(200.0), empty, targeted=False)
    assert v.status == Status.NOT_QUANTIZED and v.failed and v.line.startswith("the model written computes in float")
    met = verdict(_report(200.0, target={"met": True}), empty, targeted=True)
    assert met.status == Status.NOT_QUANTIZED and "met only by keeping everything float" in met.line


def _collapsing(tmp_path):
    """The outlier chain: all-int8, its output collapses (under 1 dB); the accuracy guard brings it to ~34."""
    return save_with_data(tmp_path, outlier_chain(), (64, 64), n_calib=5)


def test_quantize_reports_a_collapsed_output_first_and_strict_fails_on_it(tmp_path):
    m = _collapsing(tmp_path)
    config = QuantConfig.of(accuracy_guard=False, placement="static")
    runs = [quantize(m, config, calib=tmp_path / "c", out=tmp_path / f"q{i}.onnx", latency_runs=2) for i in (1, 2)]
    for r in runs:
        assert r.report.status == "low-fidelity"
        assert r.report.warnings[0].startswith("worst output m4 ") and "below the 20 dB floor" in r.report.warnings[0]
    assert runs[0].report.warnings[0] == runs[1].report.warnings[0]  # the same command, the same line
    saved = json.loads((tmp_path / "q1.onnx.report.json").read_text())
    assert saved["status"] == "low-fidelity" and saved["warnings"][0] == runs[0].report.warnings[0]
    with pytest.raises(GateFailed, match="--strict: worst output m4"):
        quantize(m, config, calib=tmp_path / "c", out=tmp_path / "s.onnx", latency_runs=2, strict=True)
    assert (tmp_path / "s.onnx").exists()  # written all the same
    guarded = quantize(m, QuantConfig.of(placement="static"), calib=tmp_path / "c", out=tmp_path / "g.onnx")
    assert guarded.report.status == "ok" and not any("floor" in w for w in guarded.report.warnings)


def test_the_line_says_what_the_guard_measured_of_the_remedy():
    """The guard's trials, where it ran, tell how far one more layer back to float goes (PicoDet-style: 0.3 dB)."""
    r = _report(sqnr_db=5.5)
    r.guard = {"checked": [{"nodes": ["conv3"], "gain_db": 0.31, "round": 1}, {"nodes": ["conv7"], "gain_db": -0.1}]}
    line = verdict(r, QUANTIZED, targeted=False).line
    assert line.endswith(
        "; the accuracy guard measured at most +0.3 dB from one more layer back to float (2 tried, conv3 the best): "
        "the loss is spread over many layers"
    )
    r.guard["checked"][1]["gain_db"] = 1.2  # one layer that gains 1 dB or more: no claim that the loss is spread
    assert verdict(r, QUANTIZED, targeted=False).line.endswith("(2 tried, conv7 the best)")
    r.guard["kept_float"] = ["conv7"]  # a layer the guard kept float is not "one more"
    assert verdict(r, QUANTIZED, targeted=False).line.endswith(
        "(1 tried, conv3 the best): the loss is spread over many layers"
    )
    r.guard = None  # --no-guard: nothing measured, nothing said
    assert verdict(r, QUANTIZED, targeted=False).line.endswith("until every output reaches it)")


def test_the_cli_prints_the_verdict_unwrapped_and_strict_exits_1(tmp_path):
    m = _collapsing(tmp_path)
    base = ["quantize", str(m), "--calib", str(tmp_path / "c"), "--no-guard", "--placement", "static"]
    plain = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "a.onnx")])
    assert plain.exit_code == 0, plain.output
    line = next(x for x in plain.stderr.splitlines() if x.startswith("warning: worst output m4"))
    assert "try --min-sqnr 20 (the fewest layers made more precise until every output reaches it)" in line
    strict = CliRunner().invoke(app, [*base, "--strict", "-o", str(tmp_path / "b.onnx")])
    assert strict.exit_code == 1 and "gate failed: --strict: worst output m4" in strict.stderr
    assert (tmp_path / "b.onnx").exists()


def test_nothing_quantized_is_said_on_every_run(tmp_path):
    m = save_with_data(tmp_path, mlp(), (2, 4, 64))
    config = QuantConfig.of(exclude=("MatMul", "Gemm"), placement="static")
    for i in (1, 2):
        r = quantize(m, config, calib=tmp_path / "c", out=tmp_path / f"q{i}.onnx", latency_runs=2)
        assert r.report.status == "not-quantized"
        assert r.report.warnings[0] == "the model written computes in float: no weight or activation in it is quantized"
        # the planner's bare "nothing was quantized" would say it twice (one with a reason, e.g. subgraphs, stays)
        assert not any(w.startswith("nothing was quantized") for w in r.report.warnings)
