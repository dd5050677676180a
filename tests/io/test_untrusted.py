"""Crafted model and data files: nothing outside the model's folder is read, nothing is unpickled, declared
sizes are checked against the bytes present; each is exit 2 with the reason, and nothing is written."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qcli.cli.app import app

W = np.ones((16, 16), np.float32)


def model(tmp_path, location: str, length: int | None = None, name: str = "m.onnx"):
    t = numpy_helper.from_array(W, "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(W.nbytes if length is None else length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16]) for n in ("x", "y"))
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    onnx.save(m, folder / name)
    return folder / name


@pytest.fixture
def files(tmp_path):
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(W.tobytes())
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "out.bin")
    os.symlink(tmp_path / "model" / "w.bin", tmp_path / "model" / "in.bin")  # inside, but a link all the same
    os.symlink(tmp_path, tmp_path / "model" / "linked")  # a folder link out of the model's folder
    (tmp_path / "calib").mkdir()
    for i in range(3):
        np.save(tmp_path / "calib" / f"{i}.npy", np.ones((1, 16), np.float32))
    return tmp_path


CRAFTED = {
    "dot-dot": (dict(location="../secret.bin"), "is not a plain relative path inside the model's folder"),
    "absolute": (dict(location="/etc/passwd"), "is not a plain relative path inside the model's folder"),
    "windows drive": (dict(location="C:\\secret.bin"), "is not a plain relative path inside the model's folder"),
    "symlink out": (dict(location="out.bin"), "is a symbolic link; refused"),
    "symlink in": (dict(location="in.bin"), "is a symbolic link; refused"),
    "linked folder": (dict(location="linked/secret.bin"), "resolves outside the model's folder"),
    "past the end": (dict(location="w.bin", length=10**12), "bytes 0 to 1000000000000 declared, the file holds 1024"),
    "wrong length": (dict(location="w.bin", length=512), "512 bytes declared, its dims [16, 16] need 1024"),
    "missing": (dict(location="nope.bin"), "no such file beside the model"),
}


@pytest.mark.parametrize("case", CRAFTED, ids=list(CRAFTED))
def test_crafted_external_data_is_refused_by_every_command(files, case):
    kwargs, message = CRAFTED[case]
    m = model(files, **kwargs)
    ok = model(files, "w.bin", name="ok.onnx")
    runs = {
        "inspect": ["inspect", str(m)],
        "quantize": ["quantize", str(m), "--calib", str(files / "calib"), "-o", str(files / "q.onnx")],
        "compare": ["compare", str(ok), str(m), "--data", str(files / "calib")],
    }
    for name, args in runs.items():
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (name, r.output)
    assert not (files / "q.onnx").exists()


def test_inline_bytes_that_do_not_match_the_dims_are_refused(files):
    m = onnx.load(model(files, "w.bin", name="ok.onnx"))
    onnx.load_external_data_for_model(m, str(files / "model"))
    m.graph.initializer[0].raw_data = W.tobytes()[:-4]
    onnx.save(m, files / "model" / "short.onnx")
    r = CliRunner().invoke(app, ["inspect", str(files / "model" / "short.onnx")])
    assert r.exit_code == 2 and "tensor 'w' holds 1020 bytes; its dims [16, 16] need 1024" in r.output


def test_an_object_array_is_an_error_never_unpickled(files, tmp_path, monkeypatch):
    import pickle

    called = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: called.append(a) or None)
    (tmp_path / "evil").mkdir()
    np.save(tmp_path / "evil" / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    m = model(files, "w.bin", name="ok.onnx")
    r = CliRunner().invoke(app, ["quantize", str(m), "--calib", str(tmp_path / "evil"), "-o", str(tmp_path / "q.onnx")])
    assert r.exit_code == 2 and "input 'x' is object" in r.output and not called


def test_a_batch_declaring_more_memory_than_the_machine_has_fails_early_with_the_figure(files, tmp_path, monkeypatch):
    """Checked from the headers, before any batch is read (here the machine's memory is made 1 MiB)."""
    from qcli.io import feeds

    monkeypatch.setattr(feeds, "physical_memory", lambda: 2**20)
    (tmp_path / "big").mkdir()
    np.save(tmp_path / "big" / "0.npy", np.zeros((40_000, 16), np.float32))  # 2.4 MiB
    m = onnx.load(model(files, "w.bin", name="ok.onnx"))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"  # any batch size
    onnx.save(m, files / "model" / "dyn.onnx")
    r = CliRunner().invoke(app, ["quantize", str(files / "model" / "dyn.onnx"), "--calib", str(tmp_path / "big"),
                                 "-o", str(tmp_path / "q.onnx")])  # fmt: skip
    assert (
        r.exit_code == 2
        and "one batch declares 2.4 MiB of arrays, more than this machine's 1.0 MiB of memory" in r.output
    )


def _graph(tmp_path, nodes, name):
    w = numpy_helper.from_array(W, "w")
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16]) for n in ("x", "y"))
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (
            [("MatMul", ["x", "w"], ["a"], "mm"), ("Add", ["a", "c"], ["b"], "add"), ("Relu", ["b"], ["c"], "relu"),
             ("Identity", ["c"], ["y"], "id")],
            "the graph has a cycle: node(s) 'add' (Add), 'relu' (Relu)",
        ),
        ([("MatMul", ["x", "w"], ["a"], "mm"), ("Add", ["a", "ghost"], ["y"], "add")],
         "node 'add' (Add) reads 'ghost', which no node, input or initializer provides"),
    ],
    ids=["cycle", "dangling input"],
)  # fmt: skip
def test_a_broken_graph_is_exit_2_naming_the_node_before_any_work(files, tmp_path, nodes, message):
    m = _graph(tmp_path, [helper.make_node(op, i, o, name=n) for op, i, o, n in nodes], "broken.onnx")
    for args in (
        ["inspect", str(m)],
        ["quantize", str(m), "--calib", str(files / "calib"), "-o", str(tmp_path / "q.onnx")],
    ):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and f"broken.onnx cannot run: {message}" in r.output, r.output
        assert "qcli: calibrating" not in r.output


def test_nodes_out_of_order_are_not_broken(tmp_path):
    from qcli.core.graph import broken

    nodes = [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("MatMul", ["x", "w"], ["a"])]
    m = onnx.load(_graph(tmp_path, nodes, "unsorted.onnx"))
    assert broken(m.graph) is None
