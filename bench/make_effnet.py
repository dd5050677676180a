"""Write `effnet`: an EfficientNet-Lite0-shaped convnet laid out as TensorFlow/Keras exports it, with its
calibration and evaluation inputs.

    python bench/make_effnet.py

EfficientNet-Lite0 (stem 32, 16 MBConv blocks in 7 stages, head 1280; 49 Conv, ~0.4 GMAC at 224x224) as a
Keras model comes out of tf2onnx / tflite2onnx: every strided or depthwise conv is a VALID Conv behind an
explicit constant zero `Pad` on the spatial axes, with TF's SAME split (the odd pixel after: pads
[0,0,0,0,0,0,1,1] before a 3x3 stride-2 conv at an even size), BatchNorm folded into the Conv weights and
bias, ReLU6 as opset-13 Clip(0, 6) with min/max inputs, MBConv blocks (expand 1x1 -> Pad -> depthwise ->
project 1x1, no activation, residual Add where shapes match), GlobalAveragePool -> Squeeze -> MatMul -> Add
head with 1000 classes. NCHW, opset 13, fixed seed.

Weights: data-dependent (netbuild.py: principal components of each conv's input patches); every BatchNorm
gets the mean and variance measured on real images, layer by layer, and gamma/beta drawn around
trained-looking values (ReLU6 layers: gamma ~1, beta ~0.3; linear projections: gamma ~0.5), so every
layer's activations have realistic ranges. The classifier is initialised on the same
images (LSUV-style: logits centred per class and scaled to a spread of 3 across images), so top-1 depends
on the image. Not trained: a realistically initialised stand-in.

Inputs: make_inputs.py's synthetic text pages, 224x224, normalised to [-1, 1] as EfficientNet-Lite expects
((x - 127.5) / 127.5); 24 calib and 24 eval files [1, 3, 224, 224], .npy. The statistics come from 16
further pages drawn from the calibration glyphs.
"""

from __future__ import annotations

import numpy as np
import onnx
from common import CACHE
from make_inputs import GlyphPainter, det_sample
from netbuild import Net, glyph_pools, write_inputs

SEED = 2020
SIZE = 224
N_STATS = 16
CLASSES = 1000
OPSET = 13
STEM, HEAD = 32, 1280
# EfficientNet-Lite0 stages: (expand ratio, kernel, stride, output channels, repeats)
STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3)]
STAGES += [(6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
LOGIT_SPREAD = 3.0
OUT = CACHE / "effnet"


def same_pads(size: int, k: int, stride: int) -> list[int]:
    """TensorFlow's SAME padding as ONNX Pad pads (NCHW, spatial axes only): the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    before, after = total // 2, total - total // 2
    return [0, 0, before, before, 0, 0, after, after]


def pad(net: Net, x: str, k: int, stride: int, name: str) -> str:
    pads = net.const(f"{name}/paddings", np.array(same_pads(net.values[x].shape[2], k, stride), dtype=np.int64))
    zero = net.const("const_zero", np.array(0.0, dtype=np.float32))
    return net.op("Pad", [x, pads, zero], name, mode="constant")


def relu6(net: Net, x: str, name: str) -> str:
    lo = net.const("relu6/min", np.array(0.0, dtype=np.float32))
    hi = net.const("relu6/max", np.array(6.0, dtype=np.float32))
    return net.op("Clip", [x, lo, hi], name)


def conv_relu6(net: Net, x: str, cout: int, k: int, name: str, stride: int = 1, group: int = 1) -> str:
    y = net.conv(x, cout, k, f"{name}/Conv2D", stride=stride, group=group, beta=0.3, spread=0.4)
    return relu6(net, y, f"{name}/Relu6")


def mbconv(net: Net, x: str, expand: int, k: int, stride: int, cout: int, name: str) -> str:
    cin = net.channels(x)
    h = conv_relu6(net, x, cin * expand, 1, f"{name}/expand") if expand != 1 else x
    h = pad(net, h, k, stride, f"{name}/dwconv_pad")
    h = conv_relu6(net, h, net.channels(h), k, f"{name}/dwconv", stride=stride, group=net.channels(h))
    h = net.conv(h, cout, 1, f"{name}/project/Conv2D", gamma=0.5, spread=0.3)
    if stride == 1 and cin == cout:
        h = net.op("Add", [h, x], f"{name}/add")
    net.keep(h)
    return h


def classifier(net: Net, x: str) -> str:
    """GlobalAveragePool -> Squeeze -> MatMul -> Add, the Dense weights scaled and centred on the stats batch."""
    gap = net.op("GlobalAveragePool", [x], "head/avg_pool")
    axes = net.const("head/squeeze_axes", np.array([2, 3], dtype=np.int64))
    feats = net.op("Squeeze", [gap, axes], "head/squeeze")
    f = net.values[feats].astype(np.float64)
    w = net.rng.standard_normal((f.shape[1], CLASSES)) / np.sqrt(f.shape[1])
    z = f @ w
    scale = LOGIT_SPREAD / (z - z.mean(axis=0)).std()
    b = -z.mean(axis=0) * scale + net.rng.normal(0, 0.5, CLASSES)
    mm = net.op("MatMul", [feats, net.const("head/dense/kernel", (w * scale).astype(np.float32))], "head/dense/MatMul")
    return net.op("Add", [mm, net.const("head/dense/bias", b.astype(np.float32))], "logits")


def build(rng: np.random.Generator, images: np.ndarray) -> Net:
    net = Net(rng, OPSET, images, "images")
    x = pad(net, "images", 3, 2, "stem/pad")
    x = conv_relu6(net, x, STEM, 3, "stem", stride=2)
    for stage, (expand, k, stride, cout, repeats) in enumerate(STAGES):
        for r in range(repeats):
            x = mbconv(net, x, expand, k, stride if r == 0 else 1, cout, f"block{stage + 1}{'abcd'[r]}")
    x = conv_relu6(net, x, HEAD, 1, "top")
    classifier(net, x)
    return net


def main() -> None:
    rng = np.random.default_rng(SEED)
    pools = glyph_pools(rng)
    painter = GlyphPainter(pools[0], rng)
    stats = np.concatenate([det_sample(painter, SIZE) for _ in range(N_STATS)])
    model = build(rng, stats).model([("logits", ["N", CLASSES])], "effnet_lite0", "bench/make_effnet.py")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "model.onnx")
    write_inputs(OUT, pools, rng, lambda p: det_sample(p, SIZE))
    ops = [n.op_type for n in model.graph.node]
    print(f"effnet: model.onnx ({ops.count('Conv')} Conv, {ops.count('Pad')} Pad), inputs in {OUT}")


if __name__ == "__main__":
    main()
