"""qcli inspect: the model's facts and what would be quantized, without data, by the same planners."""

import json

import numpy as np
import onnx
from models import cnn, mlp, model_of, vi
from onnx import helper
from typer.testing import CliRunner

from qcli.cli.app import app

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, ["inspect", *map(str, args)])


def test_w8a8_candidates_and_reasons(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    res = _cli(tmp_path / "m.onnx", "--exclude", "conv3", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert [c["node"] for c in info["candidates"]] == ["conv1", "conv2", "fc"]
    assert info["float_nodes"] == [
        {
            "node": "conv3",
            "op_type": "Conv",
            "action": "float",
            "reason": {"kind": "excluded", "text": "excluded by --exclude 'conv3'", "pattern": "conv3"},
        }
    ]
    assert info["ops"] == {
        "Conv": 3,
        "BatchNormalization": 1,
        "Relu": 3,
        "MaxPool": 1,
        "GlobalAveragePool": 1,
        "Flatten": 1,
        "Gemm": 1,
    }
    assert info["inputs"] == [{"name": "x", "type": "FLOAT", "shape": ["N", 3, 16, 16]}]
    assert "fold batchnorm into conv: 1" in info["notes"]
    assert "w8a8 int8 candidates: Conv x2, Gemm x1" in res.stderr
    assert (tmp_path / "m.onnx").read_bytes() == before  # read only


def test_w4a16_plan_is_data_free_and_final(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    info = json.loads(_cli(tmp_path / "m.onnx", "--scheme", "w4a16", "--json").stdout)
    assert [(c["node"], c["action"]) for c in info["candidates"]] == [("mm1", "int4-weight"), ("mm2", "int4-weight")]
    small = json.loads(_cli(tmp_path / "m.onnx", "--scheme", "w4a16", "--block-size", "256", "--json").stdout)
    assert small["candidates"] == [] and {d["node"] for d in small["float_nodes"]} == {"mm1", "mm2"}
    assert any("nothing was quantized" in w for w in small["warnings"])


def test_ops_without_an_integer_kernel_are_named(tmp_path):
    w = np.ones((2, 2, 3, 3), np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up")]
    onnx.save(model_of(nodes, [vi("x", ["N", 2, 4, 4])], [vi("y", ["N", 2, 6, 6])], {"w": w}), tmp_path / "m.onnx")
    info = json.loads(_cli(tmp_path / "m.onnx", "--json").stdout)
    assert {d["node"]: d["reason"]["kind"] for d in info["float_nodes"]} == {"up": "no-int-kernel"}
    assert info["candidates"] == []


def test_unreadable_model_is_an_input_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    res = _cli(tmp_path / "bad.onnx")
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = _cli(tmp_path / "missing.onnx")
    assert res.exit_code == 2


def test_weights_share_external_data_and_opset_upgrade(tmp_path):
    m = cnn(opset=11)
    weights = sum(onnx.numpy_helper.to_array(t).nbytes for t in m.graph.initializer)
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    info = json.loads(_cli(tmp_path / "m.onnx", "--json").stdout)
    assert info["weights_bytes"] == weights
    assert info["external_data_files"] == ["m.data"]
    assert info["size_bytes"] == (tmp_path / "m.onnx").stat().st_size + (tmp_path / "m.data").stat().st_size
    assert "opset 11 will be upgraded to 13 for w8a8 (recorded in the report)" in info["notes"]
