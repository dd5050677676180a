"""Which outputs hold class scores: top-1 agreement (and --max-top1-drop) only where the argmax means a class."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcli.measure.evaluate import class_scores


def test_heads_and_softmax_are_class_scores_embeddings_and_ids_are_not(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "wc"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bc"),
             numpy_helper.from_array(np.float32(0.5), "half")]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "half"], ["embedding"]),  # [N, 8], not a classifier
        helper.make_node("MatMul", ["h", "wc"], ["z"]),
        helper.make_node("Add", ["z", "bc"], ["logits"]),  # a head with its bias
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["ids"], axis=-1, keepdims=0),  # int64
        helper.make_node("Flatten", ["logits"], ["flat"]),
        helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=1),  # [N, 1]
    ]
    f = TensorProto.FLOAT
    outs = [helper.make_tensor_value_info(n, f, ["N", 8]) for n in ("embedding",)]
    outs += [helper.make_tensor_value_info(n, f, ["N", 4]) for n in ("logits", "probs", "flat")]
    outs += [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])]
    outs += [helper.make_tensor_value_info("pooled", f, ["N", 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, ["N", 8])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "m.onnx")
    assert class_scores(tmp_path / "m.onnx") == {
        "logits": "[N, C] from MatMul",
        "probs": "[N, C] from Softmax",
        "flat": "[N, C] from MatMul",
    }
