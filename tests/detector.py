"""A small YOLOX-style detector built in code, and calibration files with a distribution shift among them.

The detector: a Focus stem (space-to-depth by four strided Slices and a Concat), Conv -> BatchNorm -> SiLU
blocks with a residual CSP-like bottleneck, two feature levels (strides 8 and 16), and YOLOX's decoupled head
per level: a 1x1 stem, a classification branch (two 3x3 SiLU convs, class logits) and a regression branch
(two 3x3 SiLU convs, box and objectness logits); per level Concat(box, sigmoid(obj), sigmoid(cls)), flattened
and concatenated over the levels into one [N, anchors, 5 + classes] output, as YOLOX exports it. Weights are
random; every BatchNorm's mean and variance are measured on real-looking inputs layer by layer (as training
leaves them), with log-normal gains and a few channels of tiny variance, so folded convs have the wide
per-channel gains of real detectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from checks import run
from onnx import TensorProto, helper, numpy_helper

SIZE = 64
CLASSES = 6


class _Net:
    def __init__(self, rng: np.random.Generator, images: np.ndarray):
        self.rng, self.images = rng, images
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.channels: dict[str, int] = {"images": 3}
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}_{self.n}"

    def model(self, outputs: list[tuple[str, list]]) -> onnx.ModelProto:
        vi = helper.make_tensor_value_info
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        g = helper.make_graph(self.nodes, "yolox_s", [vi("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])], [], inits)
        g.output.extend(vi(n, TensorProto.FLOAT, s) for n, s in outputs)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    def value(self, name: str) -> np.ndarray:
        return run(self.model([(name, None)]), {"images": self.images})[0]

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def const(self, value) -> str:
        name = self._name("c")
        self.inits[name] = np.asarray(value)
        return name

    def conv(self, x: str, cout: int, k: int, stride: int = 1, bn: bool = True, bias: float = 0.0) -> str:
        cin = self.channels[x]
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))
        wn = self.const(w.astype(np.float32))
        if not bn:
            bn_ = self.const(np.full(cout, bias, np.float32))
            y = self.op("Conv", [x, wn, bn_], pads=[k // 2] * 4, strides=[stride] * 2)
            self.channels[y] = cout
            return y
        y = self.op("Conv", [x, wn], pads=[k // 2] * 4, strides=[stride] * 2)
        v = self.value(y)
        factor = np.exp(self.rng.normal(0, 0.5, cout))
        tiny = self.rng.random(cout) < 0.1
        factor[tiny] = 10 ** -self.rng.uniform(1, 2, tiny.sum())
        stats = [
            np.exp(self.rng.normal(0, 0.4, cout)),  # gamma
            self.rng.normal(0.0, 0.3, cout),  # beta
            v.mean(axis=(0, 2, 3)),
            v.var(axis=(0, 2, 3)) * factor,
        ]
        y = self.op("BatchNormalization", [y, *(self.const(s.astype(np.float32)) for s in stats)])
        s = self.op("Sigmoid", [y])
        out = self.op("Mul", [y, s])
        self.channels[out] = cout
        return out

    def focus(self, x: str) -> str:
        parts = []
        for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1)):
            starts, ends = self.const(np.array([dy, dx])), self.const(np.array([SIZE, SIZE]))
            axes, steps = self.const(np.array([2, 3])), self.const(np.array([2, 2]))
            parts.append(self.op("Slice", [x, starts, ends, axes, steps]))
        y = self.op("Concat", parts, axis=1)
        self.channels[y] = 12
        return y

    def csp(self, x: str, c: int) -> str:
        a, b = self.conv(x, c // 2, 1), self.conv(x, c // 2, 1)
        a = self.op("Add", [a, self.conv(self.conv(a, c // 2, 1), c // 2, 3)])
        y = self.op("Concat", [a, b], axis=1)
        self.channels[y] = c
        return self.conv(y, c, 1)

    def head(self, x: str, width: int) -> str:
        stem = self.conv(x, width, 1)
        cls = self.conv(self.conv(stem, width, 3), width, 3, bn=True)
        reg = self.conv(self.conv(stem, width, 3), width, 3, bn=True)
        cls = self.conv(cls, CLASSES, 1, bn=False, bias=-4.6)
        box = self.conv(reg, 4, 1, bn=False, bias=1.0)
        obj = self.conv(reg, 1, 1, bn=False, bias=-4.6)
        y = self.op("Concat", [box, self.op("Sigmoid", [obj]), self.op("Sigmoid", [cls])], axis=1)
        shape = self.const(np.array([0, 5 + CLASSES, -1]))
        return self.op("Reshape", [y, shape])


def scene(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """Images in [0, 1]: a smooth background with a few bright and dark rectangles (objects)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        for c in range(3):
            a, b, p = rng.uniform(0.2, 0.6), rng.uniform(0.05, 0.2), rng.uniform(0, 6)
            out[i, c] = a + b * np.sin(6 * xx + p) * np.cos(4 * yy - p)
        for _ in range(rng.integers(3, 7)):
            y0, x0 = rng.integers(0, SIZE - 12, 2)
            h, w = rng.integers(6, 20, 2)
            out[i, :, y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 1, (3, 1, 1))
        out[i] += rng.normal(0, 0.02, (3, SIZE, SIZE))
    return np.clip(out, 0, 1)


def yolox(seed: int = 11) -> onnx.ModelProto:
    """The detector: [N, 3, 64, 64] in [0, 1] -> `detections` [N, 80, 5 + CLASSES] (64 + 16 anchors)."""
    rng = np.random.default_rng(seed)
    net = _Net(rng, scene(rng, 8))
    x = net.conv(net.focus("images"), 16, 3)
    x = net.csp(net.conv(x, 32, 3, stride=2), 32)
    p3 = net.csp(net.conv(x, 48, 3, stride=2), 48)
    p4 = net.csp(net.conv(p3, 64, 3, stride=2), 64)
    levels = [net.head(p3, 32), net.head(p4, 32)]
    y = net.op("Concat", levels, axis=2)
    net.op("Transpose", [y], perm=[0, 2, 1])
    net.nodes[-1].output[0] = "detections"
    return net.model([("detections", ["N", 80, 5 + CLASSES])])


def shifted_files(folder: Path, n: int = 20, shifted: tuple[int, ...] = (17,), seed: int = 3) -> Path:
    """n calibration files, one image each; the files at `shifted` are a distribution shift: the same kind of
    scene left in 0..255 pixel values (a preprocessing slip in one file of a folder, or an over-exposed
    camera), which widens every min/max range fitted on them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        x = scene(rng)
        np.save(folder / f"img{i:02d}.npy", x * 255 if i in shifted else x)
    return folder
