"""--scheme dynamic through quantize() and the CLI: no calibration data needed, the output runs in onnxruntime,
and the accuracy target works with it (ranking by the output of each int8 op, matched by name)."""

import json

import onnx
from checks import batches_of, ops, sqnr_on
from models import mlp, outlier_chain, write_batches
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.cli.app import app
from qcli.core.plan import Action, Why


def test_cli_needs_no_data_and_writes_the_fused_form(tmp_path):
    onnx.save(mlp(k=64, hidden=128), tmp_path / "m.onnx")
    res = CliRunner().invoke(app, ["quantize", str(tmp_path / "m.onnx"), "--scheme", "dynamic", "--json"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "m.dyn.onnx"
    assert json.loads(res.stdout)["candidate"] == str(out)
    found = ops(out)
    assert found.get("DynamicQuantizeLinear", 0) >= 1 and found.get("MatMulInteger", 0) == 1  # the 128x10 one too small
    assert "fidelity and latency not measured" in res.stderr
    res = CliRunner().invoke(
        app, ["quantize", str(tmp_path / "m.onnx"), "--scheme", "dynamic", "--calibrator", "percentile"]
    )
    assert res.exit_code == 0 and "--calibrator does not apply to --scheme dynamic" in res.stderr


def test_accuracy_target_returns_the_outlier_layer_to_float(tmp_path):
    """mm3 reads h2, one channel of which is 1000x the rest: quantized per tensor at run time, the other
    channels are lost and the output collapses. --min-sqnr 25 returns exactly mm3 to float.
    Measured: all-int8 -0.1 dB; with mm3 float 35.0 dB."""
    onnx.save(outlier_chain(), tmp_path / "m.onnx")
    write_batches(tmp_path / "e", [(64, 64)] * 3, seed=7)
    config = QuantConfig.of(scheme="dynamic", reduce_range=False)
    plain = quantize(tmp_path / "m.onnx", config, None, tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)
    feeds = batches_of(tmp_path / "e")
    assert [d.node for d in plain.plan.by_action(Action.INT8_OUT_FLOAT)] == ["mm1", "mm2", "mm3"]  # mm4: small
    assert sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds) < 1
    config = QuantConfig.of(scheme="dynamic", reduce_range=False, min_sqnr=25)
    r = quantize(tmp_path / "m.onnx", config, None, tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)
    assert r.report.target["met"] and r.report.target["returned_to_float"] == ["mm3"]
    assert r.plan.decision("mm3").why == Why.TARGET
    assert [d.node for d in r.plan.by_action(Action.INT8_OUT_FLOAT)] == ["mm1", "mm2"]
    assert sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds) > 33
