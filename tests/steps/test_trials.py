"""Trials (trials.py): the ranking pass keeps one model in memory and one session open at a time; the figures
decisions are taken on."""

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import cnn, outlier_chain, write_batches
from onnx import numpy_helper

from qcli import QuantConfig, quantize
from qcli.core.plan import QuantPlan
from qcli.io.feeds import FidelityData
from qcli.io.structure import read_structure
from qcli.measure import diagnose, evaluate
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


def test_trials_in_one_scope_run_each_file_through_the_reference_once(tmp_path, monkeypatch):
    """The steps of one quantize share the reference's recorded outputs: a trial on the same files records
    nothing more, one on more files records only those; the figures are those of unshared trials."""
    model = cnn(channels=8)
    onnx.save(model, tmp_path / "ref.onnx")
    folder = write_batches(tmp_path / "d", [(2, 3, 16, 16)] * 4)
    ref_runs = []
    real_run = evaluate.Session.run

    def counted(self, names, feed):
        ref_runs.extend([self.path.name] if self.path.name == "ref.onnx" else [])
        return real_run(self, names, feed)

    monkeypatch.setattr(evaluate.Session, "run", counted)

    class Src:
        def load(self, item):
            return {"x": np.load(item)}

    src, items = Src(), sorted(folder.glob("*.npy"))
    held, more = FidelityData(src, items[:2], "held"), FidelityData(src, items, "held and fitted")

    def perturbed(m, plan):
        out = copy.deepcopy(m)
        w = out.graph.initializer[0]
        w.raw_data = (numpy_helper.to_array(w) * 1.01).tobytes()
        return out

    def steps():
        figures = []
        for data in (held, more, held):
            with trials.trials(model, tmp_path / "ref.onnx", data, lambda: None, perturbed) as t:
                figures += [t.measure(QuantPlan("w8a8")), t.measure(QuantPlan("w8a8"))]
        return figures

    alone = steps()
    assert len(ref_runs) == 2 + 4 + 2  # each trial recorded its files once
    ref_runs.clear()
    with trials.share_reference_outputs():
        shared = steps()
    assert len(ref_runs) == 4  # the held files once, the other two once
    assert shared == alone and 20 < alone[0][0].sqnr_db < 80
