"""Loop and Scan bodies quantized as models of their own (schemes/branches.py, schemes/body_feeds.py): their
calibration samples are their own inputs at each iteration (exposed as extra scan outputs for one run), at most
MAX_ITERATIONS a batch; the Q/DQ sit inside the body, where onnxruntime fuses them; a body whose carried values
change shape cannot be sampled that way and says so."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from checks import sqnr
from models import looped, scanned

from qcli import QuantConfig, quantize
from qcli.core.graph import subgraphs
from qcli.schemes.body_feeds import MAX_ITERATIONS

STATIC = QuantConfig.of(placement="static")


def _images(folder, n, seed):
    folder.mkdir()
    r = np.random.default_rng(seed)
    for i in range(n):
        np.save(folder / f"b{i}.npy", r.standard_normal((2, 3, 12, 12)).astype(np.float32))
    return folder


def _sqnr(ref, cand, feeds):
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (ref, cand))
    return min(sqnr(a.run(None, f)[0], b.run(None, f)[0]) for f in feeds)


def _body_ops(path, tmp_path) -> Counter:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    m = onnx.load(tmp_path / "optimized.onnx")
    return Counter(n.op_type for node in m.graph.node for g in subgraphs(node) for n in g.node)


def test_a_loop_body_is_calibrated_on_its_iterations_and_quantized_inside(tmp_path):
    onnx.save(looped(trips=12), tmp_path / "m.onnx")
    calib, held = _images(tmp_path / "c", 5, 1), _images(tmp_path / "e", 3, 7)
    r = quantize(tmp_path / "m.onnx", STATIC, calib, tmp_path / "q.onnx", held, latency_runs=2)
    body = r.plan.branches["refine/body"]
    assert [d.action.value for d in body.nodes if d.op_type == "Conv"] == ["int8"]
    note = next(n for n in r.report.notes if n.startswith("Loop body refine/body: quantized"))
    assert f"on the {5 * MAX_ITERATIONS} iterations" in note  # 12 iterations a batch, 8 of them sampled
    q = onnx.load(tmp_path / "q.onnx")
    assert not any(t.name == "W" for t in q.graph.initializer)  # the float weight is gone
    assert _body_ops(tmp_path / "q.onnx", tmp_path)["QLinearConv"] == 1
    feeds = [{"img": np.load(f)} for f in sorted(held.glob("*.npy"))]
    db = _sqnr(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds)
    assert db > 24, db


def test_a_scan_body_is_quantized_inside(tmp_path):
    onnx.save(scanned(), tmp_path / "m.onnx")
    for d, seed in (("c", 1), ("e", 7)):
        (tmp_path / d).mkdir()
        r = np.random.default_rng(seed)
        for i in range(6 if d == "c" else 3):
            seq = r.standard_normal((20, 8, 64)).astype(np.float32)
            np.savez(tmp_path / d / f"b{i}.npz", s0=np.zeros((8, 64), np.float32), seq=seq)
    r = quantize(tmp_path / "m.onnx", STATIC, tmp_path / "c", tmp_path / "q.onnx", tmp_path / "e", latency_runs=2)
    body = r.plan.branches["rnn/body"]
    assert {d.action.value for d in body.nodes if d.op_type == "MatMul"} == {"int8-float-out"}
    feeds = [dict(np.load(f)) for f in sorted((tmp_path / "e").glob("*.npz"))]
    assert _sqnr(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds) > 32  # measured 37 dB


def test_a_body_whose_carried_values_change_shape_says_why_it_got_no_samples(tmp_path):
    onnx.save(looped(growing=True), tmp_path / "m.onnx")
    calib = _images(tmp_path / "c", 5, 1)
    r = quantize(tmp_path / "m.onnx", STATIC, calib, tmp_path / "q.onnx", latency_runs=2)
    note = next(n for n in r.report.notes if n.startswith("Loop body refine/body:"))
    assert "could not be collected" in note and "quantized as dynamic" in note
    x = np.random.default_rng(3).standard_normal((2, 3, 12, 12)).astype(np.float32)
    out = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"img": x})
    assert out[1].shape == (2 * 2**4,)
