"""Calibration statistics for the data-aware weight algorithms (qcli/weight_stats.py, qcli/weights/stats.py) and
the per-weight error figures (weight_only.weight_errors). Oracles: the activations recomputed here in numpy from
the float weights, X^T X and mean |x| of all of them at once; output errors measured on those activations."""

from __future__ import annotations

import numpy as np
import pytest
from models import model_of, vi
from onnx import helper

from qcli.core.config import QuantConfig, Scheme
from qcli.core.errors import InputError
from qcli.passes.weight_only import key_of, quantize_plan, weight_errors
from qcli.schemes.weight_only.planner import plan_w4a16
from qcli.schemes.weight_only.stats import collect
from qcli.weights import StatsAccumulator

rng = np.random.default_rng(0)
INITS = {
    "w1": (rng.standard_normal((32, 64)) * 0.2).astype(np.float32),
    "wq": (rng.standard_normal((64, 48)) * 0.2).astype(np.float32),
    "wk": (rng.standard_normal((64, 48)) * 0.2).astype(np.float32),
    "shared": (rng.standard_normal((48, 40)) * 0.2).astype(np.float32),
}


def model():
    """x -> MatMul w1 -> Relu = r; r read by wq and wk (one input, two weights); weight `shared` read by two
    MatMuls with different inputs (q and k)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "wq"], ["q"], name="mq"),
        helper.make_node("MatMul", ["r", "wk"], ["k"], name="mk"),
        helper.make_node("MatMul", ["q", "shared"], ["a"], name="ma"),
        helper.make_node("MatMul", ["k", "shared"], ["b"], name="mb"),
    ]
    outs = [vi("a", ["N", "T", 40]), vi("b", ["N", "T", 40])]
    return model_of(nodes, [vi("x", ["N", "T", 32])], outs, INITS, opset=21)


def activations(x):
    """Every MatMul input, recomputed in numpy, rows flattened."""
    r = np.maximum(x @ INITS["w1"], 0)
    q, k = r @ INITS["wq"], r @ INITS["wk"]
    return {n: v.reshape(-1, v.shape[-1]).astype(np.float64) for n, v in {"x": x, "r": r, "q": q, "k": k}.items()}


BATCHES = [{"x": rng.standard_normal((2, t, 32)).astype(np.float32)} for t in (5, 9, 3)]  # ragged T


def all_rows():
    acts = [activations(b["x"]) for b in BATCHES]
    return {n: np.concatenate([a[n] for a in acts]) for n in acts[0]}


def plan_of(m):
    return plan_w4a16(m, QuantConfig.of(scheme=Scheme.W4A16, weight_format="qdq", block_size=16))


def test_statistics_are_x_transpose_x_and_mean_abs_of_every_input_row():
    m = model()
    stats = collect(m, plan_of(m), BATCHES)
    rows = all_rows()
    for weight, act in (("w1", "x"), ("wq", "r"), ("wk", "r")):
        x = rows[act]
        np.testing.assert_allclose(stats[weight].h, x.T @ x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[weight].abs_mean, np.abs(x).mean(axis=0), rtol=1e-5, atol=1e-7)
        assert stats[weight].rows == x.shape[0] == 34
    assert stats["wq"] is stats["wk"]  # one input: its K x K is held once


def test_a_weight_read_from_two_inputs_gets_the_sum_of_their_statistics():
    m = model()
    st = collect(m, plan_of(m), BATCHES)["shared"]
    rows = all_rows()
    q, k = rows["q"], rows["k"]
    np.testing.assert_allclose(st.h, q.T @ q + k.T @ k, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(st.abs_mean, np.abs(np.concatenate([q, k])).mean(axis=0), rtol=1e-5)
    assert st.rows == 68


def test_streaming_equals_all_at_once_and_scaling_follows_x_over_s():
    x = rng.standard_normal((7, 3, 10))
    acc = StatsAccumulator()
    for part in (x[:2], x[2:3], x[3:]):
        acc.update(part)
    st, flat = acc.value(), x.reshape(-1, 10)
    np.testing.assert_allclose(st.h, flat.T @ flat, rtol=1e-12)
    s = rng.uniform(0.5, 2.0, 10)
    sc = st.scaled(s)
    np.testing.assert_allclose(sc.h, (flat / s).T @ (flat / s), rtol=1e-12)
    np.testing.assert_allclose(sc.abs_mean, np.abs(flat / s).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sc.scaled(s).scale, s * s)


def test_non_finite_activations_and_no_data_are_input_errors():
    m = model()
    bad = [BATCHES[0], {"x": np.full((1, 2, 32), np.nan, np.float32)}]
    with pytest.raises(InputError, match="batch 2: tensor 'x' contains NaN"):
        collect(m, plan_of(m), bad)
    with pytest.raises(InputError, match="no calibration batches"):
        collect(m, plan_of(m), [])


def test_weight_errors_are_the_relative_weight_and_output_errors_on_the_data():
    """Oracle: ||X (W - Q)||^2 / ||X W||^2 on the activations themselves (MatMul B is [K, N])."""
    m = model()
    plan = plan_of(m)
    stats = collect(m, plan, BATCHES)
    quantized = quantize_plan(m, plan, stats=stats)
    errors = weight_errors(m, quantized, stats)
    nodes = {n.name: n for n in m.graph.node}
    key = key_of(nodes["mq"], next(w for w in plan.weights if w.node == "mq"))
    w, q = INITS["wq"].astype(np.float64), quantized[key].dequantized().T.astype(np.float64)
    x = all_rows()["r"]
    assert errors[key].weight == pytest.approx(np.sum((w - q) ** 2) / np.sum(w**2), rel=1e-9)
    assert errors[key].output == pytest.approx(np.sum((x @ (w - q)) ** 2) / np.sum((x @ w) ** 2), rel=1e-4)
    assert 0 < errors[key].output < 0.05 and 0 < errors[key].weight < 0.05
    assert all(e.output is None for e in weight_errors(m, quantized).values())
