"""Write `yolox`: a YOLOX-style detector laid out as YOLOX's own ONNX export writes it, with calibration and
evaluation inputs cropped from real photos.

    python bench/make_yolox.py

YOLOX (width 0.25 = nano's channels without its depthwise convs, depth 0.33) at 320x320, 80 classes: a
Focus stem (four strided Slices and a Concat: space to depth), BaseConv blocks (Conv, BatchNorm folded,
SiLU as Sigmoid -> Mul), CSPDarknet (CSP layers: two 1x1 branches, bottlenecks with residual Add on the
backbone, Concat, 1x1), an SPP bottleneck (MaxPool 5/9/13), the PAFPN neck (1x1 lateral convs, nearest
Resize x2 + Concat, stride-2 convs + Concat) and the decoupled head per level (1x1 stem; class branch: two
3x3 convs and a 1x1 to 80 logits; regression branch: two 3x3 convs, then a 1x1 to 4 box values and a 1x1
to 1 objectness logit), Concat(box, Sigmoid(obj), Sigmoid(cls)) per level, flattened and concatenated over
the levels, transposed to YOLOX's one output [N, 2100, 85] (decode_in_inference off: raw box offsets).
Opset 13, fixed seed.

Weights: data-dependent (netbuild.py), every BatchNorm's mean and variance measured on real photos with
log-normal gains; the head's last convs scaled to realistic spreads (box around 0 with spread 2, logits
around -4.6: prior 0.01). Not trained: a realistically initialised stand-in.

Inputs: crops of scikit-image's photos (photos.py), RGB in 0..255 unnormalised as YOLOX feeds its models;
calibration and evaluation crops come from different photos; 24 + 24 files [1, 3, 320, 320].
"""

from __future__ import annotations

import numpy as np
import onnx
from common import CACHE
from netbuild import Net
from photos import PhotoCrops, write_photo_inputs

SEED = 2021
SIZE = 320
N_STATS = 16
CLASSES = 80
OPSET = 13
OUT = CACHE / "yolox"
WIDTHS = (16, 32, 64, 128, 256)  # stem, dark2..dark5
PRIOR = float(np.log(0.01 / 0.99))


def base(net: Net, x: str, cout: int, k: int, name: str, stride: int = 1) -> str:
    y = net.conv(x, cout, k, f"{name}/conv/Conv", stride=stride, pad=k // 2)
    return net.op("Mul", [y, net.op("Sigmoid", [y], f"{name}/act/Sigmoid")], f"{name}/act/Mul")


def focus(net: Net, x: str) -> str:
    parts = []
    for i, (dy, dx) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        ins = [x, net.const(f"focus/starts{i}", np.array([dy, dx])), net.const("focus/ends", np.array([SIZE, SIZE]))]
        ins += [net.const("focus/axes", np.array([2, 3])), net.const("focus/steps", np.array([2, 2]))]
        parts.append(net.op("Slice", ins, f"backbone/stem/Slice_{i}"))
    return base(net, net.op("Concat", parts, "backbone/stem/Concat", axis=1), WIDTHS[0], 3, "backbone/stem/conv")


def csp(net: Net, x: str, cout: int, n: int, shortcut: bool, name: str) -> str:
    hidden = cout // 2
    a, b = base(net, x, hidden, 1, f"{name}/conv1"), base(net, x, hidden, 1, f"{name}/conv2")
    for i in range(n):
        h = base(net, base(net, a, hidden, 1, f"{name}/m.{i}/conv1"), hidden, 3, f"{name}/m.{i}/conv2")
        a = net.op("Add", [h, a], f"{name}/m.{i}/Add") if shortcut else h
    out = base(net, net.op("Concat", [a, b], f"{name}/Concat", axis=1), cout, 1, f"{name}/conv3")
    net.keep(out)
    return out


def spp(net: Net, x: str, name: str) -> str:
    y = base(net, x, net.channels(x) // 2, 1, f"{name}/conv1")
    pools = [net.op("MaxPool", [y], f"{name}/m.{k}", kernel_shape=[k, k], pads=[k // 2] * 4) for k in (5, 9, 13)]
    return base(net, net.op("Concat", [y, *pools], f"{name}/Concat", axis=1), net.channels(x), 1, f"{name}/conv2")


def fuse(net: Net, a: str, b: str, cout: int, cat: str, name: str) -> str:
    """One PAFPN step: two levels concatenated along channels, then a CSP block without shortcuts."""
    return csp(net, net.op("Concat", [a, b], cat, axis=1), cout, 1, False, name)


def upsample(net: Net, x: str, name: str) -> str:
    scales = net.const("resize_scales", np.array([1, 1, 2, 2], dtype=np.float32))
    return net.op("Resize", [x, "", scales], name, mode="nearest")


def head(net: Net, x: str, i: int) -> str:
    stem = base(net, x, 64, 1, f"head/stems.{i}")
    cls = base(net, base(net, stem, 64, 3, f"head/cls_convs.{i}.0"), 64, 3, f"head/cls_convs.{i}.1")
    reg = base(net, base(net, stem, 64, 3, f"head/reg_convs.{i}.0"), 64, 3, f"head/reg_convs.{i}.1")
    cls = net.conv(cls, CLASSES, 1, f"head/cls_preds.{i}/Conv", target_std=1.5, bias=PRIOR)
    box = net.conv(reg, 4, 1, f"head/reg_preds.{i}/Conv", target_std=2.0)
    obj = net.conv(reg, 1, 1, f"head/obj_preds.{i}/Conv", target_std=1.5, bias=PRIOR)
    parts = [box, net.op("Sigmoid", [obj], f"head/Sigmoid_obj_{i}"), net.op("Sigmoid", [cls], f"head/Sigmoid_cls_{i}")]
    y = net.op("Concat", parts, f"head/Concat_{i}", axis=1)
    return net.op("Reshape", [y, net.const("head/flat", np.array([0, 5 + CLASSES, -1]))], f"head/Reshape_{i}")


def build(rng: np.random.Generator, images: np.ndarray) -> Net:
    net = Net(rng, OPSET, images, "images")
    x = csp(
        net,
        base(net, focus(net, "images"), WIDTHS[1], 3, "backbone/dark2/0", 2),
        WIDTHS[1],
        1,
        True,
        "backbone/dark2/1",
    )
    d3 = csp(net, base(net, x, WIDTHS[2], 3, "backbone/dark3/0", 2), WIDTHS[2], 3, True, "backbone/dark3/1")
    net.pin(d3)
    d4 = csp(net, base(net, d3, WIDTHS[3], 3, "backbone/dark4/0", 2), WIDTHS[3], 3, True, "backbone/dark4/1")
    net.pin(d4)
    x = spp(net, base(net, d4, WIDTHS[4], 3, "backbone/dark5/0", 2), "backbone/dark5/1")
    d5 = csp(net, x, WIDTHS[4], 1, False, "backbone/dark5/2")
    lat0 = base(net, d5, WIDTHS[3], 1, "neck/lateral_conv0")
    net.pin(lat0)
    x = fuse(net, upsample(net, lat0, "neck/up0"), d4, WIDTHS[3], "neck/cat0", "neck/C3_p4")
    red1 = base(net, x, WIDTHS[2], 1, "neck/reduce_conv1")
    net.pin(red1)
    p3 = fuse(net, upsample(net, red1, "neck/up1"), d3, WIDTHS[2], "neck/cat1", "neck/C3_p3")
    net.pin(p3)
    p4 = fuse(net, base(net, p3, WIDTHS[2], 3, "neck/bu_conv2", 2), red1, WIDTHS[3], "neck/cat2", "neck/C3_n3")
    net.pin(p4)
    p5 = fuse(net, base(net, p4, WIDTHS[3], 3, "neck/bu_conv1", 2), lat0, WIDTHS[4], "neck/cat3", "neck/C3_n4")
    levels = [head(net, p, i) for i, p in enumerate((p3, p4, p5))]
    y = net.op("Concat", levels, "head/Concat_levels", axis=2)
    net.op("Transpose", [y], "output", perm=[0, 2, 1])
    return net


def main() -> None:
    rng = np.random.default_rng(SEED)
    stats = PhotoCrops("stats", rng)
    images = np.concatenate([stats.sample(SIZE) for _ in range(N_STATS)])
    anchors = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    model = build(rng, images).model([("output", ["N", anchors, 5 + CLASSES])], "yolox", "bench/make_yolox.py")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "model.onnx")
    write_photo_inputs(OUT, rng, SIZE, lambda x: x)
    ops = [n.op_type for n in model.graph.node]
    print(f"yolox: model.onnx ({ops.count('Conv')} Conv), inputs in {OUT}")


if __name__ == "__main__":
    main()
