"""The size breakdown against the bytes of each kind counted in the test."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcli.measure.evaluate import file_size
from qcli.measure.size import breakdown


def test_the_breakdown_counts_each_initializer_by_kind_and_sums_to_the_file(tmp_path):
    inits = [
        numpy_helper.from_array(np.zeros((64, 32), np.int8), "w8"),
        numpy_helper.from_array(np.zeros((32,), np.int32), "b"),
        numpy_helper.from_array(np.zeros((10, 10), np.float32), "wf"),
        numpy_helper.from_array(np.zeros((16, 2, 16), np.uint8), "packed"),  # MatMulNBits: 4-bit blocks
        numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),
    ]
    nodes = [helper.make_node("Identity", [n], [f"{n}_o"]) for n in ("w8", "b", "wf", "shape")]
    nodes.append(helper.make_node("MatMulNBits", ["x", "packed", "wf"], ["y"], domain="com.microsoft", K=32, N=16,
                                  bits=4, block_size=16))  # fmt: skip
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for n in nodes for o in n.output]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    parts = breakdown(tmp_path / "m.onnx")
    assert parts["int8 weights"] == 64 * 32 and parts["int32 biases"] == 32 * 4 and parts["float weights"] == 400
    assert parts["4-bit blocks"] == 16 * 2 * 16 and parts["other tensors"] == 16
    assert sum(parts.values()) == file_size(tmp_path / "m.onnx") and list(parts)[-1] == "graph and metadata"


def test_weights_in_constant_nodes_count_as_weights(tmp_path):
    """Paddle's exports hold their weights in Constant nodes: counted by kind as initializers are."""
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("MatMul", ["x", "w"], ["y"])]
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 64]) for n in ("x", "y"))
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    parts = breakdown(tmp_path / "m.onnx")
    assert parts["float weights"] == 64 * 64 * 4 and sum(parts.values()) == file_size(tmp_path / "m.onnx")
