"""Recurrent layers under W8A8 (schemes/w8a8/recurrent.py): an LSTM with constant weights runs on onnxruntime's
DynamicQuantizeLSTM with int8 W and R, between the Q/DQ regions; GRU and RNN, which have no integer kernel, and
LSTMs pinned float stay float with the reason. Never silently."""

import numpy as np
import onnx
import pytest
from checks import sqnr_on
from models import crnn, write_batches
from onnx import numpy_helper

from qcli import QuantConfig, quantize
from qcli.core import qparams as qp
from qcli.core.plan import Why

STATIC = {"placement": "static"}


def _files(tmp_path, model):
    onnx.save(model, tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 1, 16, 20)] * 8, seed=1)
    write_batches(tmp_path / "e", [(2, 1, 16, 20)] * 3, seed=7)
    return tmp_path / "m.onnx"


def _feeds(folder):
    return [{"x": np.load(f)} for f in sorted(folder.glob("*.npy"))]


def test_an_lstm_runs_on_dynamicquantizelstm_with_int8_weights(tmp_path):
    model = _files(tmp_path, crnn())
    r = quantize(model, QuantConfig.of(**STATIC), tmp_path / "c", tmp_path / "q.onnx", tmp_path / "e", latency_runs=2)
    d = r.plan.decision("rnn")
    assert d.action.value == "int8-float-out" and d.reason is None
    q = onnx.load(tmp_path / "q.onnx")
    lstm = next(n for n in q.graph.node if n.op_type == "DynamicQuantizeLSTM")
    assert lstm.domain == "com.microsoft" and not any(n.op_type == "LSTM" for n in q.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    # W [1, 4H, I] per (direction, gate row), symmetric: int8 [1, I, 4H] and scales [1, 4H], against numpy
    w = numpy_helper.to_array(next(t for t in onnx.load(model).graph.initializer if t.name == "W"))
    qtype = qp.QTYPES[next(x.qtype for x in r.plan.weights if x.node == "rnn" and x.input_index == 1)]
    half = (qtype.qmax - qtype.qmin) // 2  # 127; 63 with 7-bit weights (a CPU without VNNI)
    scale = np.abs(w).max(axis=2) / half
    want = np.clip(np.round(w / scale[..., None]), -half, half).astype(np.int8).transpose(0, 2, 1)
    np.testing.assert_array_equal(inits[lstm.input[1]], want)
    np.testing.assert_allclose(inits[lstm.input[8]], scale.astype(np.float32), rtol=1e-6)
    assert "W" not in inits and "R" not in inits  # the float copies are gone
    assert sqnr_on(model, tmp_path / "q.onnx", _feeds(tmp_path / "e")) > 35  # measured 39.5 dB
    assert any("DynamicQuantizeLSTM" in n for n in r.report.notes)


@pytest.mark.parametrize(
    "model, options, why",
    [
        (crnn(cell="GRU"), {}, Why.NO_INT_KERNEL),
        (crnn(), {"exclude": ("rnn",)}, Why.EXCLUDED),
        (crnn(hidden=8), {}, Why.SPEED),
    ],
    ids=["gru", "excluded", "too-small"],
)
def test_a_recurrent_layer_left_float_says_why(tmp_path, model, options, why):
    path = _files(tmp_path, model)
    r = quantize(path, QuantConfig.of(**STATIC, **options), tmp_path / "c", tmp_path / "q.onnx", latency_runs=2)
    d = r.plan.decision("rnn")
    assert d.action.value == "float" and d.why == why, d
    q = onnx.load(tmp_path / "q.onnx")
    assert not any(n.op_type == "DynamicQuantizeLSTM" for n in q.graph.node)


def test_inspect_lists_the_lstm_among_the_int8_candidates():
    from qcli.schemes import handler_for

    inspected = handler_for("w8a8").inspect(crnn(), QuantConfig())
    assert {"node": "rnn", "op_type": "LSTM", "action": "int8-float-out"} in inspected.candidates
