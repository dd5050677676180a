"""The report's per-weight errors (qcli/weights/errors.py) against a direct numpy oracle, whole and in slices."""

import numpy as np
import pytest

from qcli.core import qparams as qp
from qcli.weights import errors as werr
from qcli.weights.blocks import quantize_rows
from qcli.weights.stats import WeightStats


def _oracle(w, q, h, scale=None):
    w, q = w.astype(np.float64), q.astype(np.float64)
    e = w - q
    out = np.trace(e @ h @ e.T) / np.trace(w @ h @ w.T)
    if scale is not None:
        w, e = w / scale, e / scale
    return np.sum(e * e) / np.sum(w * w), out


@pytest.mark.parametrize("chunk", [werr.CHUNK, 64, 7])  # whole, one row per slice, fewer elements than a row
@pytest.mark.parametrize("with_scale", [False, True])
def test_relative_errors_match_the_direct_formula_in_any_slicing(monkeypatch, chunk, with_scale):
    r = np.random.default_rng(0)
    w = r.standard_normal((37, 64)).astype(np.float32)
    x = r.standard_normal((200, 64)) * np.linspace(0.1, 3, 64)
    scale = np.linspace(0.5, 2, 64) if with_scale else None
    stats = WeightStats(h=x.T @ x, abs_mean=np.abs(x).mean(0), rows=200, scale=scale)
    bw = quantize_rows(w, qp.UINT4, False, 16, "rtn")
    monkeypatch.setattr(werr, "CHUNK", chunk)
    got = werr.relative_errors(w, bw, stats)
    want_weight, want_output = _oracle(w, bw.dequantized(), stats.h, scale)
    assert got.weight == pytest.approx(want_weight, rel=1e-9)
    assert got.output == pytest.approx(want_output, rel=1e-9)
    assert werr.relative_errors(w, bw).output is None
    np.testing.assert_array_equal(bw.dequantized(5, 9), bw.dequantized()[5:9])
