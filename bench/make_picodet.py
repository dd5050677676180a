"""Write `picodet`: a PicoDet-style layout detector (PP-LCNet backbone, HardSwish after every conv, depthwise
5x5 convs, BatchNorm folded with wide per-channel gains) as Paddle2ONNX exports it, with calibration and
evaluation inputs cropped from real photos.

    python bench/make_picodet.py

PicoDet-S-like at 320x320, 5 layout classes: PP-LCNet x0.75 (a 3x3 stride-2 stem, depthwise-separable
blocks dw3x3/dw5x5 -> pw1x1, each conv followed by HardSwish; squeeze-and-excitation in the last two
blocks: GlobalAveragePool, 1x1 Relu, 1x1 HardSigmoid, Mul), a light PAN neck (1x1 convs to 96 channels on
strides 8/16/32, nearest Resize x2 + Add top-down, depthwise 5x5 stride-2 + Add bottom-up) and a shared-
branch GFL head per level (two dw5x5 -> pw1x1 HardSwish pairs, then a 1x1 conv to 5 class logits and 32 box
distribution logits (4 sides x 8 bins)). Outputs as Paddle2ONNX writes them after the head: `scores`
[N, 2100, 5] (Sigmoid) and `boxes` [N, 2100, 32] (raw distribution logits), levels concatenated. Opset 14.

Weights: data-dependent (netbuild.py); every BatchNorm's mean and variance measured on real photos, gamma
log-normal with spread 0.5, and 6% of each conv's channels 10-40x the others' gain: after folding, one
channel of a tensor reaches tens of times the median channel's range (the trained layout detector measured
128 against 3.8). Not trained: a realistically initialised stand-in.

Inputs: crops of scikit-image's photos (photos.py), normalised with ImageNet's mean and std as PaddleDetection
feeds PicoDet; 24 + 24 files [1, 3, 320, 320].
"""

from __future__ import annotations

import numpy as np
import onnx
from common import CACHE
from netbuild import Net
from photos import PhotoCrops, write_photo_inputs

SEED = 2022
SIZE = 320
N_STATS = 16
CLASSES = 5
BINS = 8
OPSET = 14
OUT = CACHE / "picodet"
OUTLIERS = 0.06
MEAN = np.array([123.675, 116.28, 103.53], np.float32).reshape(1, 3, 1, 1)
STD = np.array([58.395, 57.12, 57.375], np.float32).reshape(1, 3, 1, 1)
# PP-LCNet x0.75 blocks: (kernel, stride, output channels, squeeze-excitation)
BLOCKS = [(3, 1, 48, False), (3, 2, 96, False), (3, 1, 96, False), (3, 2, 192, False), (3, 1, 192, False)]
BLOCKS += [(3, 2, 384, False)] + [(5, 1, 384, False)] * 5 + [(5, 2, 768, True), (5, 1, 768, True)]


def hswish_conv(net: Net, x: str, cout: int, k: int, name: str, stride: int = 1, group: int = 1) -> str:
    y = net.conv(x, cout, k, f"{name}/conv", stride=stride, group=group, pad=k // 2, outliers=OUTLIERS, spread=0.5)
    return net.op("HardSwish", [y], f"{name}/hardswish")


def se(net: Net, x: str, name: str) -> str:
    c = net.channels(x)
    s = net.op("GlobalAveragePool", [x], f"{name}/pool")
    s = net.op("Relu", [net.conv(s, c // 4, 1, f"{name}/conv1", target_std=1.0)], f"{name}/relu")
    s = net.conv(s, c, 1, f"{name}/conv2", target_std=1.5, bias=0.5)
    s = net.op("HardSigmoid", [s], f"{name}/hardsigmoid", alpha=1 / 6, beta=0.5)
    return net.op("Mul", [x, s], f"{name}/mul")


def backbone(net: Net) -> list[str]:
    x = hswish_conv(net, "images", 24, 3, "backbone/conv1", stride=2)
    feats = []
    for i, (k, stride, cout, with_se) in enumerate(BLOCKS):
        x = hswish_conv(net, x, net.channels(x), k, f"backbone/blocks{i}/dw", stride=stride, group=net.channels(x))
        x = se(net, x, f"backbone/blocks{i}/se") if with_se else x
        x = hswish_conv(net, x, cout, 1, f"backbone/blocks{i}/pw")
        net.keep(x)
        if i in (4, 10, 12):  # strides 8, 16, 32
            net.pin(x)
            feats.append(x)
    return feats


def upsample(net: Net, x: str, name: str) -> str:
    scales = net.const("resize_scales", np.array([1, 1, 2, 2], dtype=np.float32))
    return net.op("Resize", [x, "", scales], name, mode="nearest")


def neck(net: Net, feats: list[str]) -> list[str]:
    lat = [hswish_conv(net, f, 96, 1, f"neck/lateral{i}") for i, f in enumerate(feats)]
    net.pin(*lat)
    p4 = net.op("Add", [lat[1], upsample(net, lat[2], "neck/up2")], "neck/top_down1")
    p3 = net.op("Add", [lat[0], upsample(net, p4, "neck/up1")], "neck/top_down0")
    net.pin(p4, p3)
    n4 = net.op("Add", [p4, hswish_conv(net, p3, 96, 5, "neck/down0", stride=2, group=96)], "neck/bottom_up0")
    net.pin(n4)
    n5 = net.op("Add", [lat[2], hswish_conv(net, n4, 96, 5, "neck/down1", stride=2, group=96)], "neck/bottom_up1")
    return [p3, n4, n5]


def head(net: Net, x: str, i: int) -> tuple[str, str]:
    for j in range(2):
        x = hswish_conv(net, x, 96, 5, f"head/conv_feat.{i}.{j}/dw", group=96)
        x = hswish_conv(net, x, 96, 1, f"head/conv_feat.{i}.{j}/pw")
    cls = net.conv(x, CLASSES, 1, f"head/gfl_cls.{i}", target_std=1.5, bias=float(np.log(0.01 / 0.99)))
    box = net.conv(x, 4 * BINS, 1, f"head/gfl_reg.{i}", target_std=2.0)
    flat = lambda t, c, n: net.op(  # noqa: E731
        "Transpose",
        [net.op("Reshape", [t, net.const(f"head/shape{c}", np.array([0, c, -1]))], f"{n}/reshape")],
        f"{n}/transpose",
        perm=[0, 2, 1],
    )
    return flat(cls, CLASSES, f"head/cls{i}"), flat(box, 4 * BINS, f"head/box{i}")


def build(rng: np.random.Generator, images: np.ndarray) -> Net:
    net = Net(rng, OPSET, images, "images")
    levels = [head(net, x, i) for i, x in enumerate(neck(net, backbone(net)))]
    cls = net.op("Concat", [c for c, _ in levels], "head/concat_cls", axis=1)
    net.op("Sigmoid", [cls], "scores")
    net.op("Concat", [b for _, b in levels], "boxes", axis=1)
    return net


def prepare(x: np.ndarray) -> np.ndarray:
    return ((x - MEAN) / STD).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(SEED)
    stats = PhotoCrops("stats", rng)
    images = np.concatenate([prepare(stats.sample(SIZE)) for _ in range(N_STATS)])
    anchors = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    outputs = [("scores", ["N", anchors, CLASSES]), ("boxes", ["N", anchors, 4 * BINS])]
    model = build(rng, images).model(outputs, "picodet", "bench/make_picodet.py")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "model.onnx")
    write_photo_inputs(OUT, rng, SIZE, prepare)
    ops = [n.op_type for n in model.graph.node]
    print(f"picodet: model.onnx ({ops.count('Conv')} Conv, {ops.count('HardSwish')} HardSwish), inputs in {OUT}")


if __name__ == "__main__":
    main()
