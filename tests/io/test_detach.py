"""Weight-free skeletons: sizes from headers, writing tensor by tensor, checking without the weights."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from checks import run
from models import cnn, mlp, model_of, vi
from onnx import TensorProto, helper, numpy_helper

from qcli.io import detach
from qcli.io.detach import Skeleton, tensor_nbytes


def _unchanged(model):
    """A way to see later that `model` is exactly as it was."""
    before = model.SerializeToString()
    return lambda: model.SerializeToString() == before


@pytest.mark.parametrize(
    "dtype,shape",
    [
        (np.float32, [3, 5]),
        (np.float16, [7]),
        (np.int64, [2, 2, 2]),
        (ml_dtypes.int4, [5]),  # two per byte, rounded up
        (ml_dtypes.uint4, [4, 4]),
        (bool, [9]),
        (np.float32, []),  # a scalar
    ],
)
def test_tensor_size_from_the_header_is_the_size_of_the_data_onnx_writes(dtype, shape):
    t = numpy_helper.from_array(np.zeros(shape, dtype), "t")  # the oracle: onnx's own encoding
    assert tensor_nbytes(TensorProto(data_type=t.data_type, dims=t.dims)) == len(t.raw_data)
    assert tensor_nbytes(TensorProto(data_type=TensorProto.STRING, dims=[2])) is None  # never detached


@pytest.mark.parametrize("build", [cnn, mlp], ids=["cnn", "mlp"])
def test_the_size_is_what_protobuf_counts_without_serializing(build):
    model = build()
    sk = Skeleton(model)
    assert sk.detached() == {t.name for t in model.graph.initializer if len(t.raw_data) >= 1024}
    assert sk.detached()  # the test means something: some tensors are detached
    assert abs(sk.nbytes - model.ByteSize()) <= 8 * len(sk.pairs)  # measured: equal
    assert sk.model.ByteSize() < 2000 < model.ByteSize()


def test_the_skeleton_keeps_everything_but_the_large_tensors_data():
    model = cnn(channels=16)
    model.metadata_props.add(key="k", value="v")
    unchanged = _unchanged(model)
    sk = Skeleton(model)
    assert unchanged()
    full, skel = model.graph, sk.model.graph
    assert [n.SerializeToString() for n in skel.node] == [n.SerializeToString() for n in full.node]
    assert skel.input == full.input and skel.output == full.output and sk.model.metadata_props == model.metadata_props
    assert sk.model.opset_import == model.opset_import and sk.model.ir_version == model.ir_version
    for t, h in zip(full.initializer, skel.initializer):
        assert (h.name, list(h.dims), h.data_type) == (t.name, list(t.dims), t.data_type)
        if t.name in sk.detached():
            assert not h.HasField("raw_data") and h.data_location == TensorProto.EXTERNAL
        else:
            assert h == t


def test_written_with_external_data_it_runs_like_the_model_and_large_tensors_are_aligned(tmp_path):
    big = np.random.default_rng(0).standard_normal((512, 600)).astype(np.float32)  # 1.2 MB: aligned
    small = np.full((300,), 0.5, np.float32)  # 1.2 KB: detached, not aligned
    model = model_of(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        [vi("x", [2, 512])],
        [vi("y", [2, 600])],
        {"b": np.zeros(600, np.float32) + small.sum(), "w": big, "s": small},
    )
    unchanged = _unchanged(model)
    path = Skeleton(model, "w.bin").write(tmp_path / "m.onnx")
    assert unchanged()  # the model in memory still holds its data
    x = {"x": np.random.default_rng(1).standard_normal((2, 512)).astype(np.float32)}
    np.testing.assert_array_equal(run(path, x)[0], run(model, x)[0])
    loaded = onnx.load(str(path), load_external_data=False)
    offsets = {
        t.name: int(next(e.value for e in t.external_data if e.key == "offset")) for t in loaded.graph.initializer
    }
    assert set(offsets) == {"b", "w", "s"}
    assert offsets["w"] % detach.ALIGN == 0
    data = (tmp_path / "w.bin").read_bytes()
    w_at = offsets["w"]
    assert data[w_at : w_at + big.nbytes] == big.tobytes()  # little-endian float32, where the header says


def test_the_check_is_onnx_checkers_own(tmp_path):
    """A valid model passes; a MatMul of float by an int64 weight (a detached tensor: only its header is
    checked) fails the full check (strict type inference) as onnx.checker fails it on the whole model; a tensor
    whose data is shorter than its shape fails both."""
    model = mlp()
    Skeleton(model).check(full=True)
    bad = mlp()
    bad.graph.initializer[0].data_type = TensorProto.INT64  # w1 [64, 128]
    bad.graph.initializer[0].raw_data = np.zeros((64, 128), np.int64).tobytes()
    assert "w1" in Skeleton(bad).detached()
    failed = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
    with pytest.raises(failed) as oracle:
        onnx.checker.check_model(bad, full_check=True)
    with pytest.raises(oracle.type, match="inconsistent type tensor.int64"):
        Skeleton(bad).check(full=True)
    Skeleton(bad).check(full=False)  # types are only inferred in the full check
    onnx.checker.check_model(bad, full_check=False)
    short = mlp()
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:-4]
    with pytest.raises(onnx.checker.ValidationError, match="w1"):
        onnx.checker.check_model(short)
    with pytest.raises(onnx.checker.ValidationError, match="w1"):
        Skeleton(short).check(full=False)


def test_as_inputs_declares_the_large_initializers_as_inputs_with_their_type_and_shape():
    model = mlp()
    light, detached, added = detach.as_inputs(model)
    assert detached == added == {"w1", "w2"}  # b1 (512 B) and b2 stay initializers
    assert {t.name for t in light.graph.initializer} == {"b1", "b2"}
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in light.graph.input}
    assert shapes["w1"] == [64, 128] and shapes["w2"] == [128, 10]
