"""A Loop whose trip count comes from the data: each calibration batch is bounded in time (calibrate.observing,
io/session.TimeLimit), and a batch that runs past the bound is a clear error naming the Loop, not a hang."""

import time

import numpy as np
import onnx
import pytest
from models import model_of, vi
from onnx import TensorProto, helper

from qcli import QuantConfig, quantize
from qcli.calibration import calibrate
from qcli.core.errors import InputError
from qcli.core.graph import data_driven_loops


def _loop_model(trips_from_data: bool) -> onnx.ModelProto:
    """x -> Conv -> y; Loop M times: y = y * 1.0001 (M: the input `n`, or a constant 3)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Mul", ["acc_in", "k"], ["acc_out"]),
        ],
        "body",
        [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("acc_in", None)],
        [vi("cond_out", [], TensorProto.BOOL), vi("acc_out", None)],
    )
    trips = "n" if trips_from_data else "three"
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4),
        helper.make_node("Loop", [trips, "true", "y"], ["out"], name="repeat", body=body),
    ]
    inits = {
        "w": np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32),
        "true": np.array(True),
        "k": np.array(1.0001, np.float32),
        "three": np.array(3, np.int64),
    }
    inputs = [vi("x", ["N", 3, 8, 8])] + ([vi("n", [], TensorProto.INT64)] if trips_from_data else [])
    return model_of(nodes, inputs, [vi("out", None)], inits)


def test_only_loops_the_data_drives_are_bounded():
    assert data_driven_loops(_loop_model(True).graph) == ["repeat"]
    assert data_driven_loops(_loop_model(False).graph) == []


def test_a_calibration_batch_past_the_bound_is_stopped_with_a_clear_error(tmp_path, monkeypatch):
    onnx.save(_loop_model(True), tmp_path / "m.onnx")
    (tmp_path / "c").mkdir()
    for i in range(3):
        x = np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.savez(tmp_path / "c" / f"{i}.npz", x=x, n=np.array(10**12, np.int64))  # hours of looping
    monkeypatch.setattr(calibrate, "LOOP_BATCH_SECONDS", 1.0)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"ran longer than 1 s and was stopped \(the Loop 'repeat'"):
        quantize(tmp_path / "m.onnx", QuantConfig.of(placement="static"), tmp_path / "c", tmp_path / "q.onnx")
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "q.onnx").exists()
