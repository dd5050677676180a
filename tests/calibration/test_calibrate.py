"""Calibration as wired into quantize(): each method's range against numpy on the data itself, per-tensor
overrides in the plan, bad data refused with the tensor named, and the float rewrites (--equalize,
--smooth-quant) by their effect on the plan and on the quantized output."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from checks import batches_of, sqnr_on
from encoders import post_ln
from models import bn_dwsep, cnn, mlp, model_of, vi, write_batches
from onnx import helper
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.calibration import calibrate
from qcli.cli.app import app
from qcli.core.errors import InputError
from qcli.core.overrides import CalibMethod, Overrides, TensorOverride
from qcli.core.plan import Action, Why

OUTLIER = 60.0
# Floors under the gains measured over minmax (exact Q/DQ, fixed seeds): 2.74 dB; 0.56, 1.57, 1.45, 1.45 dB.
GAIN_OUTLIERS_DB = 2.0
GAIN_LAPLACE_DB = {"percentile": 0.3, "entropy": 1.2, "mse": 1.1, "least-error": 1.1}


def _files(folder, shapes, seed, outlier_every=0, laplace=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for i, s in enumerate(shapes):
        a = (rng.laplace(size=s) if laplace else rng.standard_normal(s)).astype(np.float32)
        if outlier_every and i % outlier_every == 0:
            a.flat[i] = OUTLIER
        np.save(folder / f"b{i:02d}.npy", a)
        arrays.append(a)
    return arrays


@pytest.fixture
def cnn_files(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    calib = _files(tmp_path / "c", [(2, 3, 16, 16)] * 6, seed=1, outlier_every=2)
    _files(tmp_path / "e", [(2, 3, 16, 16)] * 3, seed=7)
    return tmp_path, np.concatenate([a.ravel() for a in calib])


def _q(tmp_path, **kw):
    config = QuantConfig.of(**{"reduce_range": False, "min_macs_per_conversion": 0, "accuracy_guard": False, **kw})
    return quantize(tmp_path / "m.onnx", config, tmp_path / "c", tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)


def test_percentile_range_of_the_input_is_numpys_percentile_of_all_batches(cnn_files):
    tmp_path, x = cnn_files
    r = _q(tmp_path, calibrator="percentile", percentile=99.9)
    a = r.plan.activations["x"]
    assert a.method == "percentile"
    lo, hi = np.percentile(x, [0.1, 99.9])
    width = (x.max() - x.min()) / 1024  # the histogram keeps at least bins/2 = 1024 bins over the range
    assert a.range[0] == pytest.approx(lo, abs=float(width)) and a.range[1] == pytest.approx(hi, abs=float(width))
    assert r.report.calibration["ranges"]["x"]["method"] == "percentile"


def test_minmax_range_is_the_exact_min_max(cnn_files):
    tmp_path, _ = cnn_files
    r = _q(tmp_path)
    x = np.concatenate([np.load(tmp_path / "c" / f).ravel() for f in r.report.calibration["files"]])
    a = r.plan.activations["x"]
    assert a.method == "minmax" and a.range == (float(x.min()), float(x.max()))


def _eval_sqnr(tmp_path):
    """Worst-output SQNR of q.onnx against m.onnx on e/, with Q/DQ run exactly as written."""
    return sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", batches_of(tmp_path / "e"), exact_qdq=True)


def test_percentile_ignores_rare_calibration_outliers_and_gains_accuracy(cnn_files):
    """Calibration data with a few 60-sigma values the evaluation data does not have: minmax spends the
    input's 8 bits on them, the 99.9th percentile does not."""
    tmp_path, _ = cnn_files
    base = _q(tmp_path)
    base_db = _eval_sqnr(tmp_path)
    clipped = _q(tmp_path, calibrator="percentile", percentile=99.9)
    assert base.plan.activations["x"].range[1] == OUTLIER and clipped.plan.activations["x"].range[1] < 5
    assert _eval_sqnr(tmp_path) > base_db + GAIN_OUTLIERS_DB


def _linear():
    """One MatMul with a constant weight: the output's error is the input's quantization error."""
    w = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32) * 0.1
    return model_of(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", ["N", 64])], [vi("y", ["N", 32])], {"w": w}
    )


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse", "least-error"])
def test_heavy_tailed_activations_gain_accuracy_over_minmax(tmp_path, method):
    """Laplace-distributed inputs: a range narrower than min/max trades a little clipping for finer steps."""
    onnx.save(_linear(), tmp_path / "m.onnx")
    _files(tmp_path / "c", [(1024, 64)] * 4, seed=1, laplace=True)
    _files(tmp_path / "e", [(1024, 64)] * 2, seed=7, laplace=True)
    base = _q(tmp_path, calibrator="minmax")
    base_db = _eval_sqnr(tmp_path)
    r = _q(tmp_path, calibrator=method)
    db = _eval_sqnr(tmp_path)
    assert r.plan.activations["x"].range[1] < base.plan.activations["x"].range[1]
    assert db > base_db + GAIN_LAPLACE_DB[method], (method, base_db, db)


def test_overrides_set_the_method_of_matching_tensors_only(cnn_files):
    tmp_path, _ = cnn_files
    o = Overrides((TensorOverride("x", CalibMethod.PERCENTILE, 99.0), TensorOverride("nothing*", CalibMethod.MSE)))
    r = _q(tmp_path, overrides=o)
    methods = {t: a.method for t, a in r.plan.activations.items() if a.share is None and a.method != "constant"}
    assert methods.pop("x") == "percentile"
    assert set(methods.values()) == {"minmax"}
    assert r.plan.activations["x"].range[1] < 5  # the 99th percentile of a standard normal is 2.3
    assert any("'nothing*' matches no observed activation" in w for w in r.report.warnings)
    assert r.report.config["overrides"]["tensors"][0]["pattern"] == "x"


def test_cli_reads_an_overrides_file(cnn_files):
    tmp_path, _ = cnn_files
    (tmp_path / "o.toml").write_text('[tensors."x"]\ncalibrator = "percentile"\npercentile = 99.0\n')
    args = ["quantize", tmp_path / "m.onnx", "--calib", tmp_path / "c", "--overrides", tmp_path / "o.toml"]
    res = CliRunner().invoke(app, [str(a) for a in args + ["--dry-run", "--json"]])
    assert res.exit_code == 0, res.output
    assert '"method": "percentile"' in res.stdout
    (tmp_path / "o.toml").write_text('[tensors."x"]\ncalibrator = "kl"\n')
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 2 and "unknown calibrator 'kl'" in res.output


@pytest.mark.parametrize("threaded", [0, 1 << 30])
@pytest.mark.parametrize("bad, word", [(-1.0, "NaN"), (np.float32(3e38), "infinite")])
def test_non_finite_activation_names_the_tensor_and_batch(tmp_path, monkeypatch, bad, word, threaded):
    """Finite inputs, but an activation inside the model goes NaN (Sqrt of a negative) or inf (Exp). Its
    reader's output is NaN too: the first in the graph is named, whichever thread streamed it."""
    monkeypatch.setattr(calibrate, "THREADED_SIZE", threaded)
    op = "Sqrt" if word == "NaN" else "Exp"
    w = np.ones((8, 4), np.float32)
    nodes = [helper.make_node(op, ["x"], ["s"], name="f"), helper.make_node("MatMul", ["s", "w"], ["y"], name="mm")]
    onnx.save(model_of(nodes, [vi("x", ["N", 8])], [vi("y", ["N", 4])], {"w": w}), tmp_path / "m.onnx")
    (tmp_path / "c").mkdir()
    for i in range(3):
        a = np.full((2, 8), 0.5, np.float32)
        a[0, 0] = bad if i == 1 else 0.5
        np.save(tmp_path / "c" / f"b{i}.npy", a)
    for method in ("minmax", "percentile"):
        with pytest.raises(InputError, match=rf"batch 2: tensor 's' contains {word}"):
            quantize(tmp_path / "m.onnx", QuantConfig.of(calibrator=method), tmp_path / "c", tmp_path / "q.onnx")
    res = CliRunner().invoke(app, ["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c")])
    assert res.exit_code == 2 and "tensor 's'" in res.output
    assert not (tmp_path / "q.onnx").exists()


def test_observers_streamed_on_threads_give_the_ranges_of_one_thread(cnn_files, monkeypatch):
    """Every tensor on the pool's threads, or none: the same ranges and candidates, bit for bit."""
    tmp_path, _ = cnn_files
    got = {}
    for threaded in (0, 1 << 30):
        monkeypatch.setattr(calibrate, "THREADED_SIZE", threaded)
        plan = _q(tmp_path, calibrator="auto").plan
        got[threaded] = {t: (a.range, a.method) for t, a in plan.activations.items()}
    assert got[0] == got[1 << 30] and len(got[0]) > 3


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse", "least-error", "auto"])
def test_ragged_sequence_lengths(tmp_path, method):
    onnx.save(mlp(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, t, 64) for t in (3, 17, 9, 30, 5)])
    r = quantize(tmp_path / "m.onnx", QuantConfig.of(calibrator=method), tmp_path / "c", tmp_path / "q.onnx")
    assert r.plan.by_action(Action.INT8)
    assert r.report.fidelity[0].sqnr_db > 25


def test_equalize_flag_equalizes_and_recovers_accuracy(tmp_path):
    onnx.save(bn_dwsep(), tmp_path / "m.onnx")
    shape = (1, 3, 16, 16)
    write_batches(tmp_path / "c", [shape] * 6, seed=1)
    write_batches(tmp_path / "e", [shape] * 3, seed=7)
    plain = _q(tmp_path)
    plain_db = _eval_sqnr(tmp_path)
    eq = _q(tmp_path, equalize=True)
    eq_db = _eval_sqnr(tmp_path)
    assert "equalized" not in plain.report.calibration
    pairs = eq.report.calibration["equalized"]
    assert pairs and all(p["spread_after"] < p["spread_before"] for p in pairs)
    assert any(n.startswith("equalized ") for n in eq.report.notes)
    assert plain_db < 12 and eq_db > 30, (plain_db, eq_db)  # measured 8.7 -> 33.3 dB


def test_smooth_quant_flag_smooths_keeps_its_mul_float_and_recovers_accuracy(tmp_path):
    onnx.save(post_ln(), tmp_path / "m.onnx")
    shape = (2, 16, 64)
    write_batches(tmp_path / "c", [shape] * 4, seed=1)
    write_batches(tmp_path / "e", [shape] * 3, seed=7)
    plain = _q(tmp_path, min_activation_sqnr=0, min_macs_per_conversion=48)
    plain_db = _eval_sqnr(tmp_path)
    sm = _q(tmp_path, min_activation_sqnr=0, min_macs_per_conversion=48, smooth_quant=0.5)
    sm_db = _eval_sqnr(tmp_path)
    layers = sm.report.calibration["smoothed"]
    assert layers and "smoothed" not in plain.report.calibration
    muls = [x["mul_node"] for x in layers if x["folded_into"] == "Mul"]
    assert muls
    for name in muls:  # the inserted scale stays float, so the smoothed tensor is what gets quantized
        d = sm.plan.decision(name)
        assert d.action == Action.FLOAT and d.why == Why.UNSUPPORTED
    assert plain_db < 11 and sm_db > 27, (plain_db, sm_db)  # measured 9.1 -> 29.5 dB


def test_the_pool_streams_at_most_its_byte_budget_at_once(monkeypatch):
    """Large tensors go to the threads while the ones in flight stay within THREADED_BYTES (one larger than
    the budget runs alone); small ones are streamed by the caller; each observer is updated once."""
    monkeypatch.setattr(calibrate, "THREADED_SIZE", 10)
    monkeypatch.setattr(calibrate, "THREADED_BYTES", 100)
    lock, live, peak, seen = threading.Lock(), [0], [0], []

    class Slow:
        def update(self, x):
            threaded = threading.current_thread() is not threading.main_thread()
            with lock:
                live[0] += x.nbytes if threaded else 0
                peak[0] = max(peak[0], live[0])
            time.sleep(0.02)
            with lock:
                live[0] -= x.nbytes if threaded else 0
                seen.append((x.size, threaded))

    sizes = [20, 20, 5, 30, 20, 20]  # 80, 80, 20 (small: the caller's), 120 (over the budget: alone), 80, 80 bytes
    with ThreadPoolExecutor(4) as pool:
        assert calibrate._update(pool, [(Slow(), np.zeros(n, np.float32)) for n in sizes]) is None
    assert sorted(seen) == sorted((n, n >= 10) for n in sizes)
    assert peak[0] == 120  # never two threaded updates over 100 bytes together, the 120-byte one alone
