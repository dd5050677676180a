"""Write a depthwise-separable convnet whose folded BatchNorm gains differ widely between channels, with its
calibration and evaluation inputs: the case cross-layer equalization (qcli/passes/equalize.py) is for.

    python bench/make_dwsep.py

The model is MobileNet-V1-like (11 Conv, each followed by BatchNormalization and Relu; global average pool,
Gemm head with 100 classes), built with onnx.helper, opset 17, fixed seed. Conv weights use He init. The
BatchNorm statistics are measured layer by layer on images (as training would leave them), then some
channels get a much smaller running variance and gamma is log-normal: after folding, a few channels of a
tensor carry ranges tens of times the median one and the gains reach the hundreds, as in PicoDet-style
exports. One 8-bit range per tensor then leaves the other channels a handful of levels.

Inputs: make_inputs.py's synthetic text pages (digit glyphs on light, noisy backgrounds), 128x128,
normalised to [-1, 1] as the PP-OCR inputs are; 24 calib and 24 eval files [1, 3, 128, 128], .npy.
The BatchNorm statistics come from a third set of 32 images drawn from the calibration glyph pool.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from common import CACHE
from make_inputs import N_CALIB, N_EVAL, GlyphPainter, det_sample
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

SEED = 2019
SIZE = 128
N_STATS = 32  # images the BatchNorm statistics are measured on
CLASSES = 100
# (kind, output channels, stride): "conv" is a full 3x3 conv, "dw" a depthwise 3x3, "pw" a pointwise 1x1.
LAYERS = [
    ("conv", 16, 2),
    ("dw", 16, 1),
    ("pw", 32, 1),
    ("dw", 32, 2),
    ("pw", 64, 1),
    ("dw", 64, 1),
    ("pw", 64, 1),
    ("dw", 64, 2),
    ("pw", 128, 1),
    ("dw", 128, 1),
    ("pw", 128, 1),
]
GAMMA_SIGMA = 0.5  # log-normal gamma
VAR_SIGMA = 1.0  # log-normal factor on the measured variance
TINY_VAR_SHARE = 0.08  # share of channels whose running variance is 10^-2 .. 10^-3.5 of the measured one
EPS = 1e-5
OUT = CACHE / "dwsep"


def conv_weight(rng: np.random.Generator, kind: str, cin: int, cout: int) -> np.ndarray:
    """He init: std sqrt(2 / fan_in)."""
    k, cin_g = (1, cin) if kind == "pw" else (3, 1 if kind == "dw" else cin)
    return (rng.standard_normal((cout, cin_g, k, k)) * np.sqrt(2.0 / (cin_g * k * k))).astype(np.float32)


def run_conv(x: np.ndarray, w: np.ndarray, kind: str, stride: int) -> np.ndarray:
    """One Conv on a batch with onnxruntime (the same kernel the model will use)."""
    pad = 0 if kind == "pw" else 1
    group = w.shape[0] if kind == "dw" else 1
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, strides=[stride] * 2, group=group)
    g = helper.make_graph(
        [node],
        "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def batchnorm_params(rng: np.random.Generator, y: np.ndarray) -> dict[str, np.ndarray]:
    """gamma, beta, mean, var for a Conv output y [N, C, H, W]: the measured mean, the measured variance times
    a log-normal factor (tiny for a few channels), log-normal gamma."""
    c = y.shape[1]
    mean = y.mean(axis=(0, 2, 3))
    factor = np.exp(rng.normal(0, VAR_SIGMA, c))
    tiny = rng.random(c) < TINY_VAR_SHARE
    factor[tiny] = 10 ** -rng.uniform(2, 3.5, tiny.sum())
    var = y.var(axis=(0, 2, 3)) * factor
    gamma = np.exp(rng.normal(0, GAMMA_SIGMA, c))
    beta = rng.normal(0.2, 0.5, c)
    return {k: v.astype(np.float32) for k, v in (("g", gamma), ("b", beta), ("m", mean), ("v", var))}


def build(rng: np.random.Generator, images: np.ndarray) -> onnx.ModelProto:
    nodes, inits = [], []
    x, cin, name = images.astype(np.float32), 3, "x"
    for i, (kind, cout, stride) in enumerate(LAYERS):
        w = conv_weight(rng, kind, cin, cout)
        y = run_conv(x, w, kind, stride)
        bn = batchnorm_params(rng, y)
        k = bn["g"] / np.sqrt(bn["v"] + EPS)
        x = np.maximum((y - bn["m"][None, :, None, None]) * k[None, :, None, None] + bn["b"][None, :, None, None], 0)
        x = x.astype(np.float32)
        c = f"{kind}{i}"
        pad = 0 if kind == "pw" else 1
        group = cout if kind == "dw" else 1
        nodes += [
            helper.make_node(
                "Conv", [name, f"{c}.w"], [f"{c}.y"], name=c, pads=[pad] * 4, strides=[stride] * 2, group=group
            ),
            helper.make_node(
                "BatchNormalization",
                [f"{c}.y"] + [f"{c}.bn.{p}" for p in "gbmv"],
                [f"{c}.bn"],
                name=f"{c}.bn",
                epsilon=EPS,
            ),
            helper.make_node("Relu", [f"{c}.bn"], [f"{c}.relu"], name=f"{c}.relu"),
        ]
        inits += [numpy_helper.from_array(w, f"{c}.w")]
        inits += [numpy_helper.from_array(v, f"{c}.bn.{p}") for p, v in bn.items()]
        cin, name = cout, f"{c}.relu"
    fc_w = (rng.standard_normal((CLASSES, cin)) * np.sqrt(2.0 / cin)).astype(np.float32)
    fc_b = (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(fc_b, "fc.b")]
    nodes += [
        helper.make_node("GlobalAveragePool", [name], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "dwsep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench/make_dwsep.py")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def main() -> None:
    rng = np.random.default_rng(SEED)
    digits = load_digits().images / 16.0
    order = rng.permutation(len(digits))
    calib_pool, eval_pool = digits[order[: len(order) // 2]], digits[order[len(order) // 2 :]]
    stats = np.concatenate([det_sample(GlyphPainter(calib_pool, rng), SIZE) for _ in range(N_STATS)])
    model = build(rng, stats)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, OUT / "model.onnx")
    for split, count, pool in (("calib", N_CALIB, calib_pool), ("eval", N_EVAL, eval_pool)):
        folder = OUT / split
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.npy"):
            old.unlink()
        painter = GlyphPainter(pool, rng)
        for i in range(count):
            np.save(folder / f"{i:03d}.npy", det_sample(painter, SIZE))
    print(f"dwsep: model.onnx ({len(LAYERS)} Conv), {N_CALIB} calib + {N_EVAL} eval samples in {OUT}")


if __name__ == "__main__":
    main()
