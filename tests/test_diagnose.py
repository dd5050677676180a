import onnx
from models import cnn, write_batches
from onnx import numpy_helper

from qcli import QuantConfig, quantize


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
        QuantConfig(per_channel=False, reduce_range=False),
        calib=tmp_path / "c",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    layers = r.report.layers
    assert {x["tensor"] for x in layers} >= {"r1", "r2", "p2", "r3"}
    assert layers[0]["node"] == "conv2+relu2" and layers[0]["tensor"] == "r2"
    # measured: 5.1x the next layer's added noise
    assert layers[0]["introduced"] > 3 * max(x["introduced"] for x in layers[1:])
    by_tensor = {x["tensor"]: x for x in layers}
    assert by_tensor["r1"]["sqnr_db"] > 30  # conv1 is unaffected
