"""apply_w8a8 reads the float weights it replaces from the input model instead of copying them: the input stays
untouched, a weight a float node still reads is kept, and initializers listed as graph inputs (IR < 4) that
were replaced leave the inputs too."""

import numpy as np
import onnx
from checks import run, sqnr
from models import model_of, vi, write_batches
from onnx import helper

from qcli import QuantConfig, quantize
from qcli.core.plan import Action


def _shared(ir_inputs: bool = False):
    """conv_a (int8) and conv_b (excluded) read the same weight w; conv_c's weight is its own."""
    rng = np.random.default_rng(4)
    w = {"w": (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)}
    w["wc"] = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "wc"], ["y"], name="conv_c", pads=[1, 1, 1, 1]),
    ]
    m = model_of(nodes, [vi("x", ["N", 8, 10, 10])], [vi("y", ["N", 8, 10, 10])], w)
    if ir_inputs:
        m.ir_version = 3
        m.graph.input.extend([helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in w.items()])
        m.opset_import[0].version = 9
    return m


def _q(tmp_path, m):
    onnx.save(m, tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 8, 10, 10)] * 4, seed=1)
    config = QuantConfig.of(
        reduce_range=False, min_macs_per_conversion=0, accuracy_guard=False, placement="static", exclude=("conv_b",)
    )
    return quantize(tmp_path / "m.onnx", config, tmp_path / "c", tmp_path / "q.onnx", latency_runs=1)


def test_a_weight_a_float_node_still_reads_is_kept_and_the_model_runs(tmp_path):
    m = _shared()
    r = _q(tmp_path, m)
    assert r.plan.decision("conv_a").action != Action.FLOAT and r.plan.decision("conv_b").action == Action.FLOAT
    q = onnx.load(str(tmp_path / "q.onnx"))
    conv_b = next(n for n in q.graph.node if n.name == "conv_b")
    assert conv_b.input[1] == "w" and "w" in {t.name for t in q.graph.initializer}
    x = np.random.default_rng(9).standard_normal((2, 8, 10, 10)).astype(np.float32)
    assert sqnr(run(m, {"x": x})[0], run(tmp_path / "q.onnx", {"x": x})[0]) > 25


def test_replaced_initializers_listed_as_graph_inputs_leave_the_inputs(tmp_path):
    m = _shared(ir_inputs=True)
    _q(tmp_path, m)
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name for t in q.graph.initializer}
    assert "wc" not in inits and "wc" not in {i.name for i in q.graph.input}  # replaced by its int8 version
    assert "w" in inits  # conv_b still reads it
    x = np.random.default_rng(9).standard_normal((2, 8, 10, 10)).astype(np.float32)
    assert run(tmp_path / "q.onnx", {"x": x})[0].shape == (2, 8, 10, 10)
