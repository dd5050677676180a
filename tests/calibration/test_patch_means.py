"""Patch means against a direct computation: the mean of each output channel of the layer, run by
onnx.reference on every batch, equals output_mean() from the streamed input statistics alone."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from qcli.calibration.patch_means import PatchMeans


def _conv_mean(x_batches, w, **attrs) -> np.ndarray:
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    ys = [ref.run(None, {"x": x, "w": w})[0].astype(np.float64) for x in x_batches]
    return np.concatenate([y.transpose(1, 0, *range(2, y.ndim)).reshape(y.shape[1], -1) for y in ys], 1).mean(1)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"pads": [1, 1, 1, 1]},
        {"pads": [0, 2, 1, 1], "strides": [2, 1]},
        {"pads": [2, 2, 2, 2], "dilations": [2, 2], "strides": [2, 2]},
        {"pads": [1, 1, 1, 1], "group": 4},  # grouped
        {"pads": [1, 1, 1, 1], "group": 8, "strides": [2, 2]},  # depthwise
    ],
)
def test_conv_output_means_match_the_convolution_itself(attrs):
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    w = rng.standard_normal((8, 8 // group, 3, 3)).astype(np.float32)
    batches = [
        (rng.standard_normal((2, 8, 9, 7)) + rng.standard_normal((1, 8, 1, 1))).astype(np.float32) for _ in range(3)
    ]
    means = PatchMeans.for_conv({**attrs, "kernel_shape": [3, 3]}, w.shape)
    for x in batches:
        means.update(x)
    assert means.output_mean(w) == pytest.approx(_conv_mean(batches, w, **attrs), rel=1e-6, abs=1e-9)


def test_conv1d_and_gemm_output_means():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 4, 3)).astype(np.float32)
    batches = [rng.standard_normal((2, 4, 11)).astype(np.float32) + 1 for _ in range(2)]
    means = PatchMeans.for_conv({"pads": [1, 0], "strides": [2]}, w.shape)
    for x in batches:
        means.update(x)
    assert means.output_mean(w) == pytest.approx(_conv_mean(batches, w, pads=[1, 0], strides=[2]), rel=1e-6)
    a = [rng.standard_normal((6, 4)) + 2 for _ in range(2)]
    b = rng.standard_normal((3, 4))  # [N, K]: Gemm's transB=1
    gemm = PatchMeans.for_gemm()
    for x in a:
        gemm.update(x)
    direct = np.concatenate([x @ b.T for x in a]).mean(0)
    assert gemm.output_mean(b, trans_b=True) == pytest.approx(direct) and gemm.output_mean(b.T) == pytest.approx(direct)
    ta = PatchMeans.for_gemm(trans_a=True)
    for x in a:
        ta.update(x.T)
    assert ta.output_mean(b, trans_b=True) == pytest.approx(direct)
