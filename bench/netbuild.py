"""Build a convnet node by node with data-dependent initialisation, for the benchmark's made models.

Every node is evaluated with onnxruntime on a batch of real images as it is added (the kernels the model will
run). Conv weights are data-dependent (Kraehenbuehl et al., "Data-dependent initializations of convolutional
neural networks", 2016): random mixtures of the leading principal components of the conv's input patches,
so filters respond to the structure of the images (smooth blobs and edges in the first layer) and not to
pixel noise. A Conv's BatchNorm gets the measured mean and variance of its output, as training would leave
them, and is folded into its weights and bias; a plain Conv (no BatchNorm) is scaled to a chosen output
spread (LSUV). Activations then have realistic ranges, and the network damps small input perturbations as
a trained one does: with He-initialised random filters instead, the same layers amplify them ~1.2 dB per
layer (chaotic), and any 8-bit quantization of EfficientNet-Lite0 ends near 1 dB SQNR. Used by
make_effnet.py and make_yolo.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from make_inputs import N_CALIB, N_EVAL, GlyphPainter
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

EPS = 1e-3  # BatchNormalization epsilon of Keras and of Ultralytics
KEEP = 0.5  # dense convs: weights span at most this share of the input patches' principal components
DW_RANK = 3  # depthwise convs: each filter mixes the top 3 components of its channel's patches
PATCHES = 8192  # input patches sampled per conv for the principal components


def run_node(op: str, inputs: list[np.ndarray | None], opset: int, n_out: int = 1, **attrs) -> list[np.ndarray]:
    """One node on onnxruntime's CPU provider; None stands for an omitted optional input."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    outs = [f"o{k}" for k in range(n_out)]
    graph = helper.make_graph(
        [helper.make_node(op, names, outs, **attrs)],
        "node",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, inputs)
            if a is not None
        ],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(names, inputs) if a is not None})


class Net:
    """An ONNX graph under construction, with the value of every live tensor on the statistics batch."""

    def __init__(self, rng: np.random.Generator, opset: int, images: np.ndarray, input_name: str):
        self.rng, self.opset = rng, opset
        self.nodes: list[onnx.NodeProto] = []
        self.consts: dict[str, np.ndarray] = {}
        self.values = {input_name: images.astype(np.float32)}
        self.pinned = {input_name}
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *images.shape[1:]])

    def channels(self, x: str) -> int:
        return self.values[x].shape[1]

    def const(self, name: str, value) -> str:
        """An initializer (one per name: a second call with the same name reuses the first)."""
        if name not in self.consts:
            self.consts[name] = np.asarray(value)
        return name

    def add(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        """Append a node, evaluate it; outputs are named after the node (name, or name:k for several)."""
        outs = [name] if n_out == 1 else [f"{name}:{k}" for k in range(n_out)]
        arrays = [None if not i else self.consts[i] if i in self.consts else self.values[i] for i in inputs]
        self.values.update(zip(outs, run_node(op, arrays, self.opset, n_out, **attrs)))
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def op(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        return self.add(op, inputs, name, 1, **attrs)[0]

    def conv(
        self,
        x: str,
        cout: int,
        k: int,
        name: str,
        stride: int = 1,
        group: int = 1,
        pad: int = 0,
        gamma: float = 1.0,
        beta: float = 0.0,
        spread: float = 0.3,
        target_std: float | None = None,
        bias: float = 0.0,
        outliers: float = 0.0,
    ) -> str:
        """Conv with data-dependent weights (pca_weights). Without target_std, BatchNorm with the measured mean
        and variance, gamma = gamma * lognormal(spread), beta ~ N(beta, spread), folded into the Conv's weights
        and bias; with target_std, a plain Conv scaled so its output has that standard deviation, bias around
        `bias`. `outliers`: the share of channels whose BatchNorm gain is 10-40x the others' (folded gains of
        real mobile detectors: one channel of a tensor far beyond the median one)."""
        w = self.pca_weights(x, cout, k, stride, group)
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "group": group}
        if pad:
            attrs["pads"] = [pad] * 4
        y = run_node("Conv", [self.values[x], w.astype(np.float32)], self.opset, **attrs)[0].astype(np.float64)
        if target_std is None:
            g = gamma * np.exp(self.rng.normal(0, spread, cout))
            if outliers:  # (no draw otherwise: the other made models stay as they were)
                g[self.rng.random(cout) < outliers] *= self.rng.uniform(10, 40)
            scale = g / np.sqrt(y.var(axis=(0, 2, 3)) + EPS)
            b = self.rng.normal(beta, spread, cout) - y.mean(axis=(0, 2, 3)) * scale
        else:
            scale = np.full(cout, target_std / y.std())
            b = bias + self.rng.normal(0, 0.1 * target_std, cout)
        w = self.const(f"{name}/weights", (w * scale[:, None, None, None]).astype(np.float32))
        return self.op("Conv", [x, w, self.const(f"{name}/bias", b.astype(np.float32))], name, **attrs)

    def pca_weights(self, x: str, cout: int, k: int, stride: int, group: int) -> np.ndarray:
        """Weights [cout, cin/group, k, k] spanning the leading principal components of the conv's input patches:
        per group, random mixtures of the top KEEP share (dense) or top DW_RANK (depthwise) eigenvectors."""
        v = self.values[x]
        win = np.lib.stride_tricks.sliding_window_view(v, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        m = int(min(PATCHES, 2e7 // (v.shape[1] * k * k)))  # bounded memory for wide layers
        at = [self.rng.integers(0, n, m) for n in (win.shape[0], win.shape[2], win.shape[3])]
        patches = win[at[0], :, at[1], at[2]].astype(np.float64)  # [M, C, k, k]
        cin, per = v.shape[1] // group, cout // group
        w = np.empty((cout, cin, k, k))
        for g in range(group):
            p = patches[:, g * cin : (g + 1) * cin].reshape(m, -1)
            p -= p.mean(axis=0)
            vec = np.linalg.eigh(p.T @ p / m)[1][:, ::-1]  # by decreasing variance
            rank = min(p.shape[1], DW_RANK) if group > 1 else min(per, int(np.ceil(p.shape[1] * KEEP)))
            mix = self.rng.standard_normal((per, rank))
            w[g * per : (g + 1) * per] = (mix @ vec[:, :rank].T).reshape(per, cin, k, k)
        return w

    def pin(self, *names: str) -> None:
        """Keep these tensors' values through keep() (skip connections used much later)."""
        self.pinned.update(names)

    def keep(self, *names: str) -> None:
        """Drop the values of every tensor but these and the pinned ones (memory)."""
        live = self.pinned | set(names)
        self.values = {k: v for k, v in self.values.items() if k in live}

    def model(self, outputs: list[tuple[str, list]], graph_name: str, producer: str) -> onnx.ModelProto:
        """The finished, checked model; outputs are (tensor name, shape)."""
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [self.input],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in outputs],
            [numpy_helper.from_array(v, n) for n, v in self.consts.items()],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name=producer)
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def glyph_pools(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits split into a calibration and an evaluation half (as make_inputs.py does)."""
    digits = load_digits().images / 16.0
    order = rng.permutation(len(digits))
    return digits[order[: len(order) // 2]], digits[order[len(order) // 2 :]]


def write_splits(folder: Path, splits) -> None:
    """For each (split, count, start) of `splits`: folder/split/000.npy... (old .npy files removed), each the
    array of one call of start()'s sampler, start() called as the split begins (its random draws come then)."""
    for split, count, start in splits:
        out = folder / split
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.npy"):
            old.unlink()
        sample = start()
        for i in range(count):
            np.save(out / f"{i:03d}.npy", sample())


def write_inputs(folder: Path, pools: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, sample) -> None:
    """calib/ and eval/ .npy files, sample(painter) each, from the calibration and the evaluation glyphs."""

    def painted(pool):
        def start():
            painter = GlyphPainter(pool, rng)
            return lambda: sample(painter)

        return start

    write_splits(folder, [("calib", N_CALIB, painted(pools[0])), ("eval", N_EVAL, painted(pools[1]))])
