"""Inline models copied with external data for onnxruntime (mapped.py), and sessions loading through the copy."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from checks import run
from models import mlp, model_of, vi
from onnx import TensorProto, helper, numpy_helper

from qcli.core.errors import InputError
from qcli.io import mapped, session
from qcli.io.detach import ALIGN


def _model():
    """mlp() plus a 1.5 MB weight (aligned when external), a tiny one and one held in float_data, not raw_data."""
    m = mlp(k=64, hidden=128)
    rng = np.random.default_rng(0)
    big = (rng.standard_normal((10, 40000)) * 0.01).astype(np.float32)
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [10, 300], rng.standard_normal(3000).tolist())
    m.graph.initializer.extend([numpy_helper.from_array(big, "big"), typed])
    m.graph.initializer.append(numpy_helper.from_array(np.float32([0.5]), "tiny"))
    y = m.graph.output[0].name
    m.graph.node.extend(
        [
            helper.make_node("MatMul", [y, "big"], ["b"], name="mm_big"),
            helper.make_node("MatMul", [y, "typed"], ["t"], name="mm_typed"),
            helper.make_node("Mul", ["t", "tiny"], ["t2"], name="mul_tiny"),
        ]
    )
    m.graph.output.extend([vi("b", ["N", "T", 40000]), vi("t2", ["N", "T", 300])])
    return m


@pytest.fixture
def inline(tmp_path):
    onnx.save(_model(), tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


def _values(model: onnx.ModelProto, folder: Path) -> dict:
    return {t.name: numpy_helper.to_array(t, str(folder)) for t in model.graph.initializer}


def test_the_copy_is_the_same_model_with_large_weights_external_and_aligned(inline, tmp_path):
    (tmp_path / "copy").mkdir()
    copy = mapped.external_copy(inline, tmp_path / "copy")
    a, b = onnx.load(str(inline)), onnx.load(str(copy), load_external_data=False)
    assert list(a.graph.node) == list(b.graph.node) and list(a.graph.output) == list(b.graph.output)
    got, want = _values(b, copy.parent), _values(a, inline.parent)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    external = {t.name: t for t in b.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert set(external) == {"w1", "w2", "big"}  # 1 KB and more, in raw_data
    offset = next(int(e.value) for e in external["big"].external_data if e.key == "offset")
    assert offset % ALIGN == 0 and offset > 0  # 1 MB and more: on a boundary onnxruntime can map
    assert next(t for t in b.graph.initializer if t.name == "typed").float_data  # kept as stored
    feed = {"x": np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32)}
    for x, y in zip(run(inline, feed), run(copy, feed)):
        np.testing.assert_array_equal(x, y)


def test_inline_bytes_counts_raw_data_in_the_file_and_nothing_for_external_data(inline, tmp_path):
    m = onnx.load(str(inline))
    raw = sum(len(t.raw_data) for t in m.graph.initializer)
    assert mapped.inline_bytes(inline) == raw > 1_600_000
    onnx.save(m, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data")
    assert mapped.inline_bytes(tmp_path / "ext.onnx") == 0


def test_a_session_over_large_inline_weights_loads_the_copy_and_removes_it_on_close(inline, monkeypatch):
    monkeypatch.setattr(mapped, "MIN_BYTES", 1 << 20)
    feed = {"x": np.ones((1, 2, 64), np.float32)}
    with session.Session(inline) as s:
        folder = Path(s._copy.name)
        assert (folder / "m.onnx.data").stat().st_size > 1_600_000 and s.path == inline
        got = s.run(None, feed)
    assert not folder.exists() and s._copy is None
    for x, y in zip(got, run(inline, feed)):
        np.testing.assert_array_equal(x, y)
    monkeypatch.setattr(mapped, "MIN_BYTES", 1 << 30)  # under the threshold: the file itself
    with session.Session(inline) as s:
        assert s._copy is None


def test_a_file_that_is_no_model_is_reported_by_onnxruntime(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xff not a model")
    with pytest.raises(InputError, match="onnxruntime cannot load bad.onnx"):
        session.Session(tmp_path / "bad.onnx")


def test_a_model_without_large_weights_is_not_copied(tmp_path):
    m = model_of([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [1])], [vi("y", [1])], {})
    onnx.save(m, tmp_path / "r.onnx")
    assert mapped.inline_bytes(tmp_path / "r.onnx") == 0
    with session.Session(tmp_path / "r.onnx") as s:
        assert s._copy is None and s.run(None, {"x": np.float32([-1])})[0] == 0
