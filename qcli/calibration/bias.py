"""Bias correction's shifts: each int8 Conv/Gemm's mean output error from rounding its weights, per output
channel, measured on calibration files with the float model's inputs (Nagel et al. 2019's empirical bias
correction; NNCF's FastBiasCorrection measures the same way):

    shift[o] = mean(conv(x, W))[o] - mean(conv(x, Wq))[o] = mean(conv(x, W - Wq))[o]     bias'[o] = bias[o] + shift[o]

The mean comes from streamed input statistics (patch_means.py), no convolution run. In depthwise-separable
nets, whose per-channel kernels have 9 weights, the shift is a good share of a channel's spread and compounds
from layer to layer. Only the weights' rounding is corrected, not the input's: on the benchmark's dwsep, whose
inputs have channels with 3 levels on the tensor's 8-bit grid, matching the pre-activation mean with the input
rounding in it took the output from 18.0 to 11.7 dB, while the weights' part alone gains (18.0 -> 18.2; the
EfficientNet-Lite0-shaped net 27.9 -> 31.5 dB). Whether the corrections are kept is measured (steps/bias.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, helper

from qcli.calibration.patch_means import PatchMeans
from qcli.core.graph import GraphIndex
from qcli.core.plan import Action, QuantPlan, WeightQuant
from qcli.core.qparams import dequantize
from qcli.io.session import Session
from qcli.weights.base import quantized_weight

OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class Layer:
    node: str
    op_type: str
    x: str  # the input tensor
    weight: WeightQuant
    attrs: dict

    def means(self, weight_shape: tuple[int, ...]) -> PatchMeans:
        if self.op_type == "Conv":
            return PatchMeans.for_conv(self.attrs, weight_shape)
        return PatchMeans.for_gemm(bool(self.attrs.get("transA")))


def layers(model: ModelProto, plan: QuantPlan) -> list[Layer]:
    """The int8 Conv/Gemm with a quantized weight and an int32 bias (where a correction can be written)."""
    int8 = {d.node for d in plan.by_action(Action.INT8, Action.INT8_OUT_FLOAT)}
    roles = {(w.node, w.role): w for w in plan.weights}
    out = []
    for n in model.graph.node:
        w = roles.get((n.name, "weight"))
        if n.op_type not in OPS or n.name not in int8 or w is None or (n.name, "bias") not in roles:
            continue
        if n.input[0] not in plan.activations:  # an input int8 does not read quantized (not observed)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        implicit = attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")  # rare in exported models
        if implicit or (n.op_type == "Gemm" and not attrs.get("beta", 1.0)):  # or a Gemm ignoring its bias
            continue
        out.append(Layer(n.name, n.op_type, n.input[0], w, attrs))
    return out


def shifts(model: ModelProto, found: list[Layer], sess: Session, feeds: Iterable[dict]) -> dict[str, np.ndarray]:
    """Per layer, what to add to its bias. `sess` runs the float model and outputs every layer's input."""
    if not found:
        return {}
    idx = GraphIndex(model.graph)
    weights = {f.node: idx.const(f.weight.tensor) for f in found}
    means = {f.node: f.means(weights[f.node].shape) for f in found}
    inputs = sorted({f.x for f in found})
    for feed in feeds:
        values = dict(zip(inputs, sess.run(inputs, feed), strict=True))
        for f in found:
            means[f.node].update(values[f.x])
    out = {}
    for f in found:
        w = weights[f.node]
        error = w.astype(np.float64) - dequantize(*quantized_weight(w, f.weight))
        shift = means[f.node].output_mean(error, bool(f.attrs.get("transB")))
        if f.op_type == "Gemm":  # alpha * A @ B + beta * C
            shift = shift * f.attrs.get("alpha", 1.0) / f.attrs.get("beta", 1.0)
        out[f.node] = shift.astype(np.float32)
    return out
