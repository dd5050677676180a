"""compare --per-layer: tensors matched by name between any two models, noise recomputed here with numpy on
outputs exposed by hand, the layer that was damaged ranked first, chunked passes equal to one pass."""

import json

import numpy as np
import onnx
import pytest
from checks import run, sqnr
from models import cnn, write_batches
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qcli.cli.app import app
from qcli.measure.layerwise import per_layer

TENSORS = ["c1", "bn1", "r1", "c2", "r2", "p2", "c3", "r3", "gap", "flat", "logits"]
BLAMED = set(TENSORS) - {"p2", "flat"}  # MaxPool and Flatten move values: measured, never blamed


def _damaged(conv: str, noise: float):
    """The float model with one conv's weights perturbed: a candidate whose error starts at that conv."""
    m = cnn()
    w_name = next(n.input[1] for n in m.graph.node if n.name == conv)
    for init in m.graph.initializer:
        if init.name == w_name:
            w = numpy_helper.to_array(init)
            w = w + np.random.default_rng(0).standard_normal(w.shape).astype(np.float32) * noise * np.abs(w).mean()
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), w_name))
    return m


def _exposed(m, names):
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    have = {o.name for o in m2.graph.output}
    m2.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names if t not in have)
    return m2


@pytest.fixture
def files(tmp_path):
    onnx.save(cnn(), tmp_path / "ref.onnx")
    onnx.save(_damaged("conv2", 0.3), tmp_path / "cand.onnx")
    write_batches(tmp_path / "e", [(2, 3, 16, 16)] * 3, seed=7)
    return tmp_path


def _feeds(tmp_path):
    return [{"x": np.load(p)} for p in sorted((tmp_path / "e").iterdir())]


def test_figures_match_numpy_and_the_damaged_layer_ranks_first(files):
    feeds = _feeds(files)
    layers = per_layer(files / "ref.onnx", files / "cand.onnx", lambda: iter(feeds))
    assert {x.tensor for x in layers} == BLAMED
    ref_m, cand_m = _exposed(cnn(), TENSORS), _exposed(_damaged("conv2", 0.3), TENSORS)
    names = [o.name for o in ref_m.graph.output]
    ref = [run(ref_m, f) for f in feeds]
    cand = [run(cand_m, f) for f in feeds]
    by = {x.tensor: x for x in layers}
    for i, t in ((i, t) for i, t in enumerate(names) if t in BLAMED):
        expected = sqnr(np.concatenate([r[i].ravel() for r in ref]), np.concatenate([c[i].ravel() for c in cand]))
        assert by[t].sqnr_db == pytest.approx(expected, rel=1e-6, abs=1e-6), t
    assert layers[0].tensor == "c2" and layers[0].node == "conv2" and layers[0].op_type == "Conv"
    for t in ("c1", "bn1", "r1"):  # upstream of the damage: no noise at all, nothing introduced
        assert by[t].sqnr_db == float("inf") and by[t].introduced == 0
    assert by["r2"].introduced < by["c2"].introduced / 10  # Relu passes the noise on, adds little


def test_chunked_passes_give_the_same_figures(files):
    feeds = _feeds(files)
    one = per_layer(files / "ref.onnx", files / "cand.onnx", lambda: iter(feeds))
    many = per_layer(files / "ref.onnx", files / "cand.onnx", lambda: iter(feeds), chunk=2)
    assert [x.tensor for x in one] == [x.tensor for x in many]
    for a, b in zip(one, many):  # the same tensors computed by differently optimized sessions
        assert b.sqnr_db == pytest.approx(a.sqnr_db, rel=1e-6) and b.introduced == pytest.approx(a.introduced, rel=1e-5)


def test_only_graphs_stay_in_memory_and_each_model_is_read_whole_once_a_pass(files, monkeypatch):
    """The weights are read only to write each chunk's copy with outputs: when a session opens, no model read
    whole is referenced any more (reference counts equal to a control's that nothing else holds)."""
    import sys

    from qcli.io import session
    from qcli.measure import layerwise

    loads, whole = [], [onnx.ModelProto()]  # whole[0]: the control
    real_load = layerwise.model_io.load

    def load(path, weights=True):
        m = real_load(path, weights)
        loads.append((path.name, weights))
        if weights:
            whole.append(m)
        return m

    class Opened(session.Session):
        def __init__(self, *a, **k):
            counts = [sys.getrefcount(m) for m in whole]
            assert len(counts) > 1 and counts == [counts[0]] * len(counts)
            super().__init__(*a, **k)

    monkeypatch.setattr(layerwise.model_io, "load", load)
    monkeypatch.setattr(layerwise, "Session", Opened)
    feeds = _feeds(files)
    per_layer(files / "ref.onnx", files / "cand.onnx", lambda: iter(feeds), chunk=6)
    assert loads[:2] == [("ref.onnx", False), ("cand.onnx", False)]
    assert loads[2:] == [("ref.onnx", True), ("cand.onnx", True)] * 2  # 11 tensors: two passes of 6


def test_onnxruntime_quantized_model_is_compared_layer_by_layer(tmp_path):
    """A model qcli did not make: onnxruntime's quantize_static QDQ output keeps the float tensor names."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    onnx.save(cnn(), tmp_path / "ref.onnx")
    write_batches(tmp_path / "e", [(2, 3, 16, 16)] * 3, seed=7)
    feeds = _feeds(tmp_path)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "ref.onnx"), str(tmp_path / "ort.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    layers = per_layer(tmp_path / "ref.onnx", tmp_path / "ort.onnx", lambda: iter(feeds))
    assert len(layers) >= 6 and all(np.isfinite(x.sqnr_db) and x.sqnr_db > 10 for x in layers)
    assert any(x.introduced > 0 for x in layers)


def test_cli_per_layer_ranks_on_stderr_and_lists_every_layer_in_json(files):
    res = CliRunner().invoke(
        app,
        ["compare", str(files / "ref.onnx"), str(files / "cand.onnx"), "--data", str(files / "e"), "--per-layer"]
        + ["--top", "3", "--json", "--runs", "2"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert {x["tensor"] for x in report["layers"]} == BLAMED
    assert report["layers"][0]["node"] == "conv2"
    table = res.stderr.split("per-layer error: top 3 of 9 compute layers (all in --json)")[1].strip().splitlines()
    assert len(table) == 4 and table[1].split("\t")[4] == "conv2"


def test_models_sharing_no_tensor_name_say_so(files):
    m = cnn()
    for n in m.graph.node:
        n.output[:] = [o if o == "logits" else f"renamed_{o}" for o in n.output]
        n.input[:] = [
            i if i in ("x",) or not any(i == o for nn in cnn().graph.node for o in nn.output) else f"renamed_{i}"
            for i in n.input
        ]
    onnx.save(m, files / "other.onnx")
    res = CliRunner().invoke(
        app,
        [
            "compare",
            str(files / "ref.onnx"),
            str(files / "other.onnx"),
            "--data",
            str(files / "e"),
            "--per-layer",
            "--json",
            "--runs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert [x["tensor"] for x in json.loads(res.stdout)["layers"]] == ["logits"]


def test_a_layer_row_names_its_folded_nodes_only_where_there_are_some():
    from qcli.measure.layers import LayerError

    plain = LayerError("t", "conv", "Conv", 30.0, 0.001)
    folded = LayerError("t", "conv+relu", "Conv+Relu", 30.0, 0.001, ("conv", "relu"))
    assert "nodes" not in plain.to_dict() and plain.to_dict()["node"] == "conv"
    assert folded.to_dict()["nodes"] == ("conv", "relu")
