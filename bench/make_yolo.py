"""Write `yolo`: a YOLOv8n-shaped SiLU detector laid out as Ultralytics exports it, with its calibration and
evaluation inputs.

    python bench/make_yolo.py

YOLOv8n (width 0.25, depth 0.33, 80 classes) at 320x320: every Conv is Conv (BatchNorm folded) -> Sigmoid ->
Mul (SiLU); C2f blocks (1x1 conv, `Split` into two halves, bottlenecks with residual Add on the backbone,
Concat of all parts, 1x1 conv); SPPF (1x1 conv, MaxPool 5x5 three times, Concat, 1x1 conv); the PAN neck
with nearest `Resize` x2 upsampling + Concat and stride-2 convs + Concat; the decoupled Detect head (box
and class branches of two 3x3 SiLU convs and a plain 1x1 conv on each of P3/P4/P5), per level Concat +
Reshape, Concat over levels, Split into box and class logits, DFL (Reshape, Transpose, Softmax, 1x1 Conv
with weights 0..15) and the anchor decode (Sub, Add, Div, Mul by strides). 64 Conv, 1.1 GMAC, opset 17,
fixed seed.

Outputs: `boxes` [N, 2100, 4] (cx, cy, w, h in pixels) and `scores` [N, 2100, 80] (class sigmoid), the two
parts of Ultralytics' one [N, 84, 2100] output, kept apart so neither hides the other in SQNR and laid out
anchor-major as end-to-end (NMS plugin) exports do, so top-1 is each anchor's class (for `boxes` it means
little: the largest of cx, cy, w, h).

Weights: data-dependent (netbuild.py: principal components of each conv's input patches); every BatchNorm
gets the mean and variance measured on real images, layer by layer, with gamma ~ lognormal around 1 and
beta ~ N(0, 0.3); the head's final 1x1 convs are scaled (LSUV) to an output spread of 2 (box) and 1.5
(class) around bias 1.0 (Ultralytics' box init) and -4.6 (class prior 0.01), so activations have realistic
ranges. Not trained: a realistically initialised stand-in.

Inputs: make_inputs.py's synthetic text pages, 320x320, scaled to [0, 1] as Ultralytics feeds its models;
24 calib and 24 eval files [1, 3, 320, 320], .npy. The statistics come from 16 further pages drawn from the
calibration glyphs.
"""

from __future__ import annotations

import numpy as np
import onnx
from common import CACHE
from make_inputs import GlyphPainter, det_sample
from netbuild import Net, glyph_pools, write_inputs

SEED = 2023
SIZE = 320
N_STATS = 16
CLASSES = 80
REG_MAX = 16
OPSET = 17
STRIDES = (8, 16, 32)
CLASS_BIAS = float(np.log(0.01 / 0.99))  # prior score 0.01 (RetinaNet's init; Ultralytics' is smaller still)
OUT = CACHE / "yolo"


def i64(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def silu_conv(net: Net, x: str, cout: int, k: int, name: str, stride: int = 1) -> str:
    y = net.conv(x, cout, k, f"{name}/conv/Conv", stride=stride, pad=k // 2)
    return net.op("Mul", [y, net.op("Sigmoid", [y], f"{name}/act/Sigmoid")], f"{name}/act/Mul")


def c2f(net: Net, x: str, cout: int, n: int, shortcut: bool, name: str) -> str:
    c = cout // 2
    y = silu_conv(net, x, 2 * c, 1, f"{name}/cv1")
    parts = net.add("Split", [y, net.const(f"split_{c}_{c}", i64([c, c]))], f"{name}/Split", n_out=2, axis=1)
    for i in range(n):
        h = silu_conv(net, parts[-1], c, 3, f"{name}/m.{i}/cv1")
        h = silu_conv(net, h, c, 3, f"{name}/m.{i}/cv2")
        parts.append(net.op("Add", [parts[-1], h], f"{name}/m.{i}/Add") if shortcut else h)
    out = silu_conv(net, net.op("Concat", parts, f"{name}/Concat", axis=1), cout, 1, f"{name}/cv2")
    net.keep(out)
    return out


def sppf(net: Net, x: str, name: str) -> str:
    parts = [silu_conv(net, x, net.channels(x) // 2, 1, f"{name}/cv1")]
    for i in range(3):
        parts.append(net.op("MaxPool", [parts[-1]], f"{name}/m.{i}", kernel_shape=[5, 5], pads=[2, 2, 2, 2]))
    return silu_conv(net, net.op("Concat", parts, f"{name}/Concat", axis=1), net.channels(x), 1, f"{name}/cv2")


def upsample(net: Net, x: str, name: str) -> str:
    scales = net.const("resize_scales", np.array([1, 1, 2, 2], dtype=np.float32))
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return net.op("Resize", [x, "", scales], name, **attrs)


def detect_level(net: Net, x: str, i: int) -> str:
    """Box and class branches on one level, concatenated and flattened: [N, 64 + 80, H * W]."""
    box = silu_conv(net, silu_conv(net, x, 4 * REG_MAX, 3, f"det/cv2.{i}.0"), 4 * REG_MAX, 3, f"det/cv2.{i}.1")
    box = net.conv(box, 4 * REG_MAX, 1, f"det/cv2.{i}.2/Conv", target_std=2.0, bias=1.0)
    cls = silu_conv(net, silu_conv(net, x, CLASSES, 3, f"det/cv3.{i}.0"), CLASSES, 3, f"det/cv3.{i}.1")
    cls = net.conv(cls, CLASSES, 1, f"det/cv3.{i}.2/Conv", target_std=1.5, bias=CLASS_BIAS)
    both = net.op("Concat", [box, cls], f"det/Concat_{i}", axis=1)
    shape = net.const("det/flat_shape", i64([0, 4 * REG_MAX + CLASSES, -1]))
    return net.op("Reshape", [both, shape], f"det/Reshape_{i}")


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Grid-cell centres [1, 2, A] in cells and the stride of each anchor [1, 1, A]."""
    points, strides = [], []
    for s in STRIDES:
        n = SIZE // s
        yy, xx = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
        points.append(np.stack([xx.ravel(), yy.ravel()]))
        strides.append(np.full(n * n, s))
    return np.concatenate(points, 1)[None].astype(np.float32), np.concatenate(strides)[None, None].astype(np.float32)


def detect(net: Net, levels: list[str]) -> None:
    flat = net.op("Concat", [detect_level(net, x, i) for i, x in enumerate(levels)], "det/Concat_levels", axis=2)
    split = net.const("det/split_box_cls", i64([4 * REG_MAX, CLASSES]))
    box, cls = net.add("Split", [flat, split], "det/Split_box_cls", n_out=2, axis=1)
    net.op("Transpose", [net.op("Sigmoid", [cls], "det/Sigmoid")], "scores", perm=[0, 2, 1])
    # DFL: softmax over 16 bins per side, expectation by a 1x1 conv with weights 0..15
    dist = net.op("Reshape", [box, net.const("det/dfl_shape", i64([0, 4, REG_MAX, -1]))], "det/dfl/Reshape")
    dist = net.op("Transpose", [dist], "det/dfl/Transpose", perm=[0, 2, 1, 3])
    dist = net.op("Softmax", [dist], "det/dfl/Softmax", axis=1)
    bins = net.const("det/dfl/conv/weight", np.arange(REG_MAX, dtype=np.float32).reshape(1, REG_MAX, 1, 1))
    dist = net.op("Conv", [dist, bins], "det/dfl/conv/Conv", kernel_shape=[1, 1])
    dist = net.op("Reshape", [dist, net.const("det/dist_shape", i64([0, 4, -1]))], "det/dfl/Reshape_1")
    lt, rb = net.add("Split", [dist, net.const("split_2_2", i64([2, 2]))], "det/Split_ltrb", n_out=2, axis=1)
    points, strides = anchors()
    grid = net.const("det/anchors", points)
    x1y1 = net.op("Sub", [grid, lt], "det/Sub")
    x2y2 = net.op("Add", [grid, rb], "det/Add")
    centre = net.op("Div", [net.op("Add", [x1y1, x2y2], "det/Add_1"), net.const("two", np.float32(2))], "det/Div")
    wh = net.op("Sub", [x2y2, x1y1], "det/Sub_1")
    xywh = net.op("Concat", [centre, wh], "det/Concat_xywh", axis=1)
    pixels = net.op("Mul", [xywh, net.const("det/strides", strides)], "det/Mul")
    net.op("Transpose", [pixels], "boxes", perm=[0, 2, 1])


def build(rng: np.random.Generator, images: np.ndarray) -> Net:
    net = Net(rng, OPSET, images, "images")
    x = silu_conv(net, "images", 16, 3, "model.0", stride=2)
    x = c2f(net, silu_conv(net, x, 32, 3, "model.1", stride=2), 32, 1, True, "model.2")
    p3 = c2f(net, silu_conv(net, x, 64, 3, "model.3", stride=2), 64, 2, True, "model.4")
    net.pin(p3)
    p4 = c2f(net, silu_conv(net, p3, 128, 3, "model.5", stride=2), 128, 2, True, "model.6")
    net.pin(p4)
    x = c2f(net, silu_conv(net, p4, 256, 3, "model.7", stride=2), 256, 1, True, "model.8")
    p5 = sppf(net, x, "model.9")
    net.pin(p5)
    x = net.op("Concat", [upsample(net, p5, "model.10/Resize"), p4], "model.11/Concat", axis=1)
    h4 = c2f(net, x, 128, 1, False, "model.12")
    net.pin(h4)
    x = net.op("Concat", [upsample(net, h4, "model.13/Resize"), p3], "model.14/Concat", axis=1)
    out3 = c2f(net, x, 64, 1, False, "model.15")
    net.pin(out3)
    x = net.op("Concat", [silu_conv(net, out3, 64, 3, "model.16", stride=2), h4], "model.17/Concat", axis=1)
    out4 = c2f(net, x, 128, 1, False, "model.18")
    net.pin(out4)
    x = net.op("Concat", [silu_conv(net, out4, 128, 3, "model.19", stride=2), p5], "model.20/Concat", axis=1)
    out5 = c2f(net, x, 256, 1, False, "model.21")
    detect(net, [out3, out4, out5])
    return net


def main() -> None:
    rng = np.random.default_rng(SEED)
    pools = glyph_pools(rng)
    painter = GlyphPainter(pools[0], rng)
    stats = np.concatenate([(det_sample(painter, SIZE) + 1) / 2 for _ in range(N_STATS)])
    anchors_n = sum((SIZE // s) ** 2 for s in STRIDES)
    outputs = [("boxes", ["N", anchors_n, 4]), ("scores", ["N", anchors_n, CLASSES])]
    model = build(rng, stats).model(outputs, "yolov8n", "bench/make_yolo.py")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "model.onnx")
    write_inputs(OUT, pools, rng, lambda p: (det_sample(p, SIZE) + 1) / 2)
    ops = [n.op_type for n in model.graph.node]
    print(f"yolo: model.onnx ({ops.count('Conv')} Conv, {ops.count('Split')} Split), inputs in {OUT}")


if __name__ == "__main__":
    main()
