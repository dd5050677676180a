"""Small BERT-style encoder graphs (LayerNorm, attention, GELU FFN) with outlier channels, for the SmoothQuant
and calibration tests."""

from __future__ import annotations

import math

import numpy as np
import onnx
from models import model_of, vi
from onnx import helper

D, F = 64, 128  # model width, FFN width
OUTLIERS = {3: 30.0, 17: 55.0, 40: 80.0}  # LayerNorm scale of a few channels, x the others


class Builder:
    """Nodes and initializers of a small model, each node named after its output."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}

    def const(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value, np.float32)
        return name

    def w(self, name: str, *shape: int, scale: float = 0.1, big: dict | None = None, axis: int = 1) -> str:
        a = self.rng.standard_normal(shape) * scale
        for j, f in (big or {}).items():  # a few output columns (rows on axis 0) f times larger
            np.moveaxis(a, axis, 0)[j] *= f
        return self.const(name, a)

    def op(self, op: str, ins: list[str], out: str, **kw) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def ln(self, x: str, out: str, outliers: dict = OUTLIERS) -> str:
        g = 0.8 + 0.4 * self.rng.random(D)
        for j, f in outliers.items():
            g[j] *= f
        return self.op("LayerNormalization", [x, self.const(out + "_g", g), self.w(out + "_b", D)], out, axis=-1)

    def linear(self, x: str, out: str, k: int, n: int, bias: bool = True, big: dict | None = None) -> str:
        y = self.op("MatMul", [x, self.w(out + "_w", k, n, big=big)], out + ("_mm" if bias else ""))
        return self.op("Add", [y, self.w(out + "_bias", n)], out) if bias else y

    def gelu(self, x: str, out: str) -> str:  # x * 0.5 * (1 + erf(x / sqrt 2))
        e = self.op("Erf", [self.op("Div", [x, self.const("sqrt2", math.sqrt(2))], out + "_div")], out + "_erf")
        one = self.op("Add", [e, self.const("one", 1.0)], out + "_1p")
        return self.op("Mul", [self.op("Mul", [x, one], out + "_xm"), self.const("half", 0.5)], out)

    def attention(self, h: str, p: str) -> str:
        q, k, v = (
            self.linear(h, p + "q", D, D),
            self.linear(h, p + "k", D, D, bias=False),
            self.linear(h, p + "v", D, D),
        )
        kt = self.op("Transpose", [k], p + "kt", perm=[0, 2, 1])
        s = self.op("Mul", [self.op("MatMul", [q, kt], p + "qk"), self.const("inv_sqrt_d", D**-0.5)], p + "s")
        ctx = self.op("MatMul", [self.op("Softmax", [s], p + "p", axis=-1), v], p + "ctx")
        return self.linear(ctx, p + "o", D, D)

    def model(self, outputs: dict[str, list], x_shape=("B", "T", D)) -> onnx.ModelProto:
        m = model_of(self.nodes, [vi("x", list(x_shape))], [vi(k, s) for k, s in outputs.items()], self.inits)
        onnx.checker.check_model(m, full_check=True)
        return m


def post_ln() -> onnx.ModelProto:
    """BERT layout: LN -> attention, residual Add reading the LN output, LN -> FFN (GELU) -> residual."""
    b = Builder(10)
    h = b.ln("x", "ln1")
    h2 = b.ln(b.op("Add", [h, b.attention(h, "a_")], "res1"), "ln2", {5: 40.0, 60: 70.0})
    f = b.linear(b.gelu(b.linear(h2, "ff1", D, F, big={7: 12.0, 90: 20.0}), "gelu"), "ff2", F, D)
    b.op("Add", [h2, f], "y")
    return b.model({"y": ["B", "T", D]})
