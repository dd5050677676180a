"""Trials (trials.py): the ranking pass keeps one model in memory and one session open at a time; the figures
decisions are taken on."""

from pathlib import Path

import onnx
import pytest
from models import outlier_chain, write_batches

from qcli import QuantConfig, quantize
from qcli.io.structure import read_structure
from qcli.measure import diagnose
from qcli.measure.evaluate import OutputFidelity
from qcli.steps import trials
from qcli.steps.trials import typical_sqnr, worst_sqnr


def test_ranking_reads_the_written_model_with_one_session_open_at_a_time(tmp_path, monkeypatch, sessions):  # noqa: F811
    """The guard ranks the layers of the all-int8 model: it is written with the compared tensors as outputs
    and passed as a file (not kept in memory), and its session is closed before the float model's opens."""
    calls = []
    real = diagnose.layer_errors

    def spy(reference, quantized, plan, qnames, feeds):
        have = {o.name for o in read_structure(quantized).graph.output}
        calls.append((quantized, diagnose.quantized_outputs(reference, plan, qnames), have))
        return real(reference, quantized, plan, qnames, feeds)

    monkeypatch.setattr(trials, "layer_errors", spy)
    onnx.save(outlier_chain(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(64, 64)] * 4, seed=1)
    write_batches(tmp_path / "e", [(64, 64)] * 3, seed=7)
    config = QuantConfig.of(reduce_range=False, min_macs_per_conversion=0)
    r = quantize(tmp_path / "m.onnx", config, tmp_path / "c", tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)
    assert len(calls) == 1 and r.report.guard["kept_float"] == ["mm3"]  # the ranking ran and found the layer
    written, outputs, have = calls[0]
    assert isinstance(written, Path) and written.name == "ranked.onnx"
    assert len(outputs) == 3 and set(outputs) <= have  # h1, h2, h3's QuantizeLinear outputs
    assert sessions["opened"][:2] == ["ranked.onnx", "ref.onnx"]  # used as written: not saved again
    assert sessions["most"] == 1


def test_the_files_worst_outputs_averaged_in_db_are_not_led_by_a_batch_at_another_scale():
    a = OutputFidelity("a", 4.0, 1.0, 0.0, None, (10.0, 30.0, 20.0))
    b = OutputFidelity("b", 12.0, 1.0, 0.0, None, (15.0, 5.0, 25.0))
    assert worst_sqnr([a, b]) == 4.0
    assert typical_sqnr([a, b]) == pytest.approx(35 / 3)  # per batch the worst output: 10, 5, 20
    exact = OutputFidelity("c", 1.0, 1.0, 0.0, None, (1.0, float("inf")))
    assert typical_sqnr([exact]) == pytest.approx(100.5)  # an exact batch counts as 200 dB
    assert typical_sqnr([OutputFidelity("d", 9.0, 1.0, 0.0, None)]) == 9.0  # no batch figures: the pooled one
