"""Shared data of the weight-algorithm tests: correlated activations of unequal energy, their statistics, a
weight, the output error measured directly, and a two-layer model (MatMul, then Gemm transB=1 with alpha)."""

from __future__ import annotations

import numpy as np
from models import model_of, vi
from onnx import helper

from qcli.weights import StatsAccumulator


def correlated(rows: int, k: int, seed: int = 0, corr: float = 0.6) -> np.ndarray:
    """Activations with correlated channels of unequal energy (what GPTQ's error feedback exploits)."""
    rng = np.random.default_rng(seed)
    mix = np.linalg.qr(np.random.default_rng(100).standard_normal((k, k)))[0]
    gain = np.exp(np.random.default_rng(101).uniform(-1.5, 1.5, k))
    z = rng.standard_normal((rows, k))
    return (1 - corr) * z + corr * (z @ mix.T) * gain


def stats_of(x: np.ndarray):
    acc = StatsAccumulator()
    acc.update(x)
    return acc.value()


def output_error(x, w, q) -> float:
    ref = x @ w.T.astype(np.float64)
    return float(np.sum((ref - x @ q.T.astype(np.float64)) ** 2))


W = np.random.default_rng(3).standard_normal((48, 300)).astype(np.float32) * 0.1  # K: 2 lazy batches + a short one


def two_layer(k=64, hidden=96):
    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((k, hidden)).astype(np.float32) * 0.1}
    inits["w2"] = rng.standard_normal((32, hidden)).astype(np.float32) * 0.1  # Gemm transB=1: [N, K]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
        helper.make_node("Gemm", ["t", "w2"], ["y"], name="fc", transB=1, alpha=0.5),
    ]
    return model_of(nodes, [vi("x", ["N", k])], [vi("y", ["N", 32])], inits, opset=21)
