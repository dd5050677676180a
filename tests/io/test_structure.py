"""Reading a model file's structure without its weights."""

import numpy as np
import onnx
import pytest
from models import cnn, mlp
from onnx import TensorProto, numpy_helper

from qcli.core.errors import InputError
from qcli.io import model_io
from qcli.io.structure import WireError, read_structure

_DATA = ("float_data", "int32_data", "string_data", "int64_data", "raw_data", "double_data", "uint64_data")


def _without_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """The oracle: the whole model loaded by onnx, the data fields of the main graph's tensors cleared."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in list(m.graph.initializer) + [s.values for s in m.graph.sparse_initializer]:
        for f in _DATA:
            t.ClearField(f)
    return m


def _typed_and_sparse(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add tensors kept in typed fields (not raw_data) and a sparse initializer, unused by the graph."""
    model.graph.initializer.append(onnx.helper.make_tensor("typed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    model.graph.initializer.append(onnx.helper.make_tensor("ints", TensorProto.INT64, [2], [7, 8]))
    values = numpy_helper.from_array(np.arange(4, dtype=np.float32), "sparse")
    indices = numpy_helper.from_array(np.array([0, 2, 5, 9], np.int64), "sparse_idx")
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [10]))
    return model


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
@pytest.mark.parametrize("build", [cnn, mlp], ids=["cnn", "mlp"])
def test_the_structure_is_the_model_less_its_tensor_data(tmp_path, build, external):
    model = _typed_and_sparse(build())
    kw = {"save_as_external_data": True, "location": "m.data", "size_threshold": 0} if external else {}
    onnx.save(model, tmp_path / "m.onnx", **kw)
    got = read_structure(tmp_path / "m.onnx")
    expected = _without_data(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False))
    assert got == expected
    if external:  # the headers keep their external-data entries
        assert all(t.external_data for t in got.graph.initializer if t.name not in ("typed", "ints"))
    # everything but the data is there: a subgraph's tensors are left whole
    assert [n.name for n in got.graph.node] == [n.name for n in model.graph.node]


def test_a_subgraphs_tensors_are_kept_whole(tmp_path):
    then = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["c"], ["o"])],
        "then",
        [],
        [onnx.helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "c")],
    )
    node = onnx.helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=then)
    g = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    assert read_structure(tmp_path / "m.onnx") == model


@pytest.mark.parametrize("content", [b"", b"\x0a\xff", b"\x0b\x00", b"\x3a\x05\x0a"], ids=lambda b: b.hex() or "empty")
def test_a_malformed_file_is_refused(tmp_path, content):
    """Empty, a length past the end, a group (wire type 3), a truncated submessage."""
    (tmp_path / "bad.onnx").write_bytes(content)
    with pytest.raises(WireError):
        read_structure(tmp_path / "bad.onnx")
    with pytest.raises(InputError, match="cannot read"):
        model_io.load(tmp_path / "bad.onnx", weights=False)


def test_load_without_weights_gives_the_inputs_and_refuses_what_load_refuses(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    light, full = model_io.load(tmp_path / "m.onnx", weights=False), model_io.load(tmp_path / "m.onnx")
    assert light.graph.input == full.graph.input and light.graph.node == full.graph.node
    assert not any(t.raw_data for t in light.graph.initializer)
    m = cnn()
    m.ir_version = 99
    onnx.save(m, tmp_path / "new.onnx")
    with pytest.raises(InputError, match="IR version 99"):
        model_io.load(tmp_path / "new.onnx", weights=False)
