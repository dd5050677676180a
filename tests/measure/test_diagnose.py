import numpy as np
import onnx
import pytest
from checks import run
from models import cnn, vi, write_batches
from onnx import numpy_helper

from qcli import QuantConfig, pipeline, quantize
from qcli.core import qparams as qp
from qcli.measure import diagnose


def test_layer_with_an_outlier_channel_is_blamed_first(tmp_path):
    """conv2 gets one output channel 1000x larger: with per-tensor weights the other channels lose their
    resolution there, so conv2 (whose Relu is folded: tensor r2) must top the introduced-error list."""
    m = cnn()
    for i, t in enumerate(m.graph.initializer):
        if t.name == "w2":
            w = numpy_helper.to_array(t).copy()
            w[0] *= 1000.0
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, "w2"))
    onnx.save(m, tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 3, 16, 16)] * 6)
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(per_channel=False, reduce_range=False),
        calib=tmp_path / "c",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    layers = r.report.layers
    assert {x["tensor"] for x in layers} >= {"r1", "r2", "r3"}
    assert "p2" not in {x["tensor"] for x in layers}  # MaxPool: measured (conv3 reads it), never blamed
    assert layers[0]["node"] == "conv2+relu2" and layers[0]["tensor"] == "r2"
    # measured: 5.1x the next layer's added noise
    assert layers[0]["introduced"] > 3 * max(x["introduced"] for x in layers[1:])
    by_tensor = {x["tensor"]: x for x in layers}
    assert by_tensor["r1"]["sqnr_db"] > 30  # conv1 is unaffected


@pytest.fixture
def captured(tmp_path, monkeypatch):
    """quantize() on the cnn; the arguments of its final per-layer pass (the float graph, the quantized model
    or its file, the plan, the quantized names and the batches)."""
    calls = []
    real = diagnose.layer_errors

    def spy(reference, quantized, plan, qnames, feeds):
        feeds = list(feeds)
        calls.append((reference, quantized, plan, qnames, feeds))
        return real(reference, quantized, plan, qnames, feeds)

    monkeypatch.setattr(pipeline, "layer_errors", spy)
    onnx.save(cnn(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 3, 16, 16)] * 4)
    write_batches(tmp_path / "e", [(2, 3, 16, 16)] * 4, seed=7)
    c, e = tmp_path / "c", tmp_path / "e"
    r = quantize(tmp_path / "m.onnx", QuantConfig(), c, tmp_path / "q.onnx", e, latency_runs=2)
    assert len(calls[-1][-1]) == 4  # batches
    return r, calls[-1]


def _oracle_db(reference, quantized, plan, qnames, feeds, tensor):
    """One tensor's SQNR from plain onnxruntime runs of both models, each exposing it, and numpy."""
    ref, q = onnx.ModelProto(), quantized if isinstance(quantized, onnx.ModelProto) else onnx.load(quantized)
    ref.CopyFrom(reference)
    ref.graph.output.append(vi(tensor, None))
    a = plan.activations[tensor]
    q.graph.output.append(vi(qnames[tensor], None, qp.QTYPES[a.qtype].onnx_type))
    signal = noise = 0.0
    for feed in feeds:
        r = run(ref, feed)[-1].astype(np.float64)
        d = (run(q, feed)[-1].astype(np.float64) - a.zero_point) * a.scale
        signal, noise = signal + np.sum(r**2), noise + np.sum((r - d) ** 2)
    return 10 * np.log10(signal / noise)


def test_one_session_at_a_time_and_passes_give_the_numpy_figures(captured, sessions, monkeypatch):
    """The quantized model's int8 activations are recorded, its session closed, then the float model runs:
    never both at once. With a budget of one tensor a pass, the figures are the same as in one pass."""
    r, args = captured
    one = diagnose.layer_errors(*args)
    assert sessions["most"] == 1 and sessions["opened"] == ["cand.onnx", "ref.onnx"]
    assert {x["tensor"] for x in r.report.layers} == {x.tensor for x in one if x.op_type not in ("MaxPool", "Flatten")}
    for x in one:
        assert x.sqnr_db == pytest.approx(_oracle_db(*args, x.tensor), abs=1e-6)
    monkeypatch.setattr(diagnose, "RECORD_BYTES", 1)  # under every tensor: one tensor a pass
    monkeypatch.setattr(diagnose, "file_size", lambda path: 0)
    many = diagnose.layer_errors(*args)
    assert many == one and sessions["most"] == 1
    assert sessions["opened"].count("cand.onnx") == 1 + len(one)  # a cand then a ref session per pass
    assert sessions["opened"][2:] == ["cand.onnx", "ref.onnx"] * len(one)
