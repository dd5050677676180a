"""Loading and saving: external data, the >2 GB paths, and atomic writes that never leave a partial model."""

import contextlib
import os
import sys

import numpy as np
import onnx
import pytest
from checks import batches_of, run, sqnr_on
from models import cnn, mlp, write_batches
from onnx import version_converter

from qcli import QuantConfig, Scheme, quantize
from qcli.core.errors import InputError
from qcli.io import detach, model_io


def _state(folder):
    """Every file (hidden ones included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _big(monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)  # take the external-data path


STEPS = [("save", "onnx.save"), ("replace", "os.replace #1"), ("replace2", "os.replace #2"), ("mode", "_set_mode")]


@pytest.mark.parametrize("large", [False, True], ids=["inline", "external-data"])
@pytest.mark.parametrize("step", [s for s, _ in STEPS], ids=[d for _, d in STEPS])
@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt], ids=["error", "ctrl-c"])
def test_a_failure_at_any_step_of_the_write_leaves_the_previous_output_untouched(
    tmp_path, monkeypatch, large, step, exc
):
    """An earlier output (model + its data file) exists; the new write fails at one of its steps. Afterwards the
    folder holds exactly what it held before (no partial model, no temp folder, no stray data file), or, when
    the failure came after the commit point, exactly the new model and its data."""
    if large:
        _big(monkeypatch)
    out = tmp_path / "q.onnx"
    model_io.save_atomic(cnn(channels=8), out)
    before = _state(tmp_path)
    calls = {"n": 0}

    def failing(real, target):
        def f(*a, **k):
            calls["n"] += 1
            if calls["n"] == target:
                raise exc("simulated")
            return real(*a, **k)

        return f

    if step == "save":

        def partial_save(model, path, *a, **k):  # dies half-way through writing the file
            with open(path, "wb") as f:
                f.write(model.SerializeToString()[:100])
            raise exc("simulated")

        monkeypatch.setattr(model_io.onnx, "save", partial_save)
    elif step in ("replace", "replace2"):
        monkeypatch.setattr(model_io.os, "replace", failing(os.replace, 1 if step == "replace" else 2))
    else:
        monkeypatch.setattr(model_io, "_set_mode", failing(model_io._set_mode, 1))
    new = cnn(channels=16)
    try:
        model_io.save_atomic(new, out)
        failed = False
    except InputError as e:  # the system refused a write: the environment's failure (exit 2), naming the file
        assert exc is OSError and str(out) in str(e) and "simulated" in str(e)
        failed = True
    except KeyboardInterrupt:
        failed = True
    after = _state(tmp_path)
    if failed and after == before:
        return  # nothing changed
    assert not failed or step == "replace2" or not large, "a failed write changed the folder"
    # committed: the new model, complete, with only its own data file
    assert {n for n in after if not n.startswith("q.onnx")} == set()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    m = onnx.load(str(out))
    assert len(m.graph.node) == len(new.graph.node)
    assert len(after) == (2 if large else 1)


def test_overwriting_an_output_with_external_data_removes_the_old_data_file(tmp_path, monkeypatch):
    _big(monkeypatch)
    out = tmp_path / "q.onnx"
    model_io.save_atomic(cnn(channels=8), out)
    first = model_io.external_data_files(out)
    model_io.save_atomic(cnn(channels=16), out)
    second = model_io.external_data_files(out)
    assert first != second and all(p.exists() for p in second) and not any(p.exists() for p in first - second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["q.onnx", *(p.name for p in second)])
    x = {"x": np.ones((1, 3, 16, 16), np.float32)}
    np.testing.assert_allclose(run(out, x)[0], run(cnn(channels=16), x)[0], rtol=1e-5, atol=1e-6)


def test_text_files_are_atomic_and_get_normal_permissions(tmp_path, monkeypatch):
    umask = os.umask(0o022)
    try:
        p = tmp_path / "r.json"
        model_io.write_text_atomic(p, "{}")
        assert p.read_text() == "{}" and (p.stat().st_mode & 0o777) == 0o644

        def boom(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(model_io.os, "replace", boom)
        with pytest.raises(KeyboardInterrupt):
            model_io.write_text_atomic(p, "new")
        assert p.read_text() == "{}" and [q.name for q in tmp_path.iterdir()] == ["r.json"]
    finally:
        os.umask(umask)


def test_external_data_in_and_out(tmp_path):
    onnx.save(cnn(), tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    write_batches(tmp_path / "c", [(1, 3, 16, 16)] * 3)
    out = tmp_path / "out" / "q.onnx"
    r = quantize(tmp_path / "ext.onnx", QuantConfig(), calib=tmp_path / "c", out=out, latency_runs=2)
    measured = sqnr_on(tmp_path / "ext.onnx", out, batches_of(tmp_path / "c"))
    assert measured > (31 if r.plan.decisions["reduce_range"]["value"] else 38)  # measured 33.6 / 41.4 dB
    assert abs(r.report.fidelity[0].sqnr_db - measured) < 1e-6
    assert r.report.size["reference_bytes"] == sum(p.stat().st_size for p in tmp_path.glob("ext.onnx*"))


@pytest.mark.parametrize("scheme", [Scheme.W8A8, Scheme.W4A16])
def test_models_past_the_protobuf_limit_take_the_external_data_paths(tmp_path, monkeypatch, scheme):
    """Above 2 GB a model cannot be serialized in one protobuf: saving, sessions, opset conversion and the
    checker go through files with external data. The threshold is lowered so a small model takes those paths."""
    _big(monkeypatch)
    onnx.save(cnn(opset=11), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(1, 3, 16, 16)] * 3)
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(scheme=scheme),
        calib=tmp_path / "c",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    assert (tmp_path / "q.onnx.data").exists()  # weights written beside the model
    assert r.report.size["candidate_bytes"] > (tmp_path / "q.onnx").stat().st_size  # size counts the data file
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)
    measured = sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", batches_of(tmp_path / "c"))
    # measured: W8A8 41.4 dB with 8-bit weights, 33.6 dB with 7-bit (CPUs without VNNI); W4A16 19.9 dB
    if scheme == Scheme.W4A16:
        assert measured > 17
    else:
        assert measured > (31 if r.plan.decisions["reduce_range"]["value"] else 38)


@pytest.mark.parametrize("field,value,message", [("ir_version", 99, "IR version 99"), ("opset", 99, "opset 99")])
def test_a_model_the_installed_onnxruntime_cannot_load_is_refused(tmp_path, field, value, message):
    m = cnn()
    if field == "ir_version":
        m.ir_version = value
    else:
        m.opset_import[0].version = value
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(InputError, match=message):
        model_io.load(tmp_path / "m.onnx")


# --- Weight-free paths: nothing serializes or measures a model that holds its weights ---------------------------

_SERIALIZERS = ("SerializeToString", "SerializePartialToString", "ByteSize")


def _holds_weights(message) -> bool:
    graph = message.graph if isinstance(message, onnx.ModelProto) else message
    return any(t.HasField("raw_data") and detach.tensor_nbytes(t) >= detach.DETACH_BYTES for t in graph.initializer)


@contextlib.contextmanager
def whole_model_serializations():
    """Records every call that serializes (or measures, which upb does by serializing) a ModelProto or
    GraphProto still holding weight data: above 2 GB each would fail."""
    seen = []

    def hook(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") in _SERIALIZERS:
            obj = getattr(arg, "__self__", None)
            if isinstance(obj, (onnx.ModelProto, onnx.GraphProto)) and _holds_weights(obj):
                seen.append(f"{arg.__name__} from {frame.f_code.co_filename}:{frame.f_lineno}")

    sys.setprofile(hook)
    try:
        yield seen
    finally:
        sys.setprofile(None)


def test_the_tracer_sees_a_whole_model_serialized():
    """The oracle of the tests below bites: onnx's own in-memory shape inference and checker are seen."""
    with whole_model_serializations() as seen:
        onnx.shape_inference.infer_shapes(cnn())
        onnx.checker.check_model(cnn())
    assert len(seen) == 2


def test_sizes_types_checks_sessions_and_conversions_never_serialize_the_weights(tmp_path, monkeypatch):
    _big(monkeypatch)  # every model counts as past the limit: the external-data paths
    model = cnn(opset=11)
    with whole_model_serializations() as seen:
        size = model_io.model_bytes(model)
        floats = model_io.float_tensors(model)
        model_io.check(model, full=True)
        model_io.save_for_session(model, tmp_path)
        model_io.save_with_outputs(model, {"r1": onnx.TensorProto.FLOAT}, tmp_path, "outputs.onnx")
        model_io.save_atomic(model, tmp_path / "out.onnx")
        model, note = model_io.ensure_opset(model, 13, "per-channel Q/DQ")
    assert seen == []
    assert note and size > 1000 and {"x", "r1", "logits", "w1"} <= floats
    assert (tmp_path / "out.onnx.data").exists() and model_io.onnx_opset(model) == 13


@pytest.mark.parametrize("build", [lambda: cnn(opset=11), mlp], ids=["cnn", "mlp"])
def test_float_tensors_are_those_inference_on_the_whole_model_finds(build):
    """The oracle: onnx shape inference on the model with its weights. A Cast to int64 and a Shape (int64)
    give non-float tensors, so the answer is not simply every tensor."""
    model = build()
    g = model.graph
    last = g.output[0].name
    g.node.extend(
        [
            onnx.helper.make_node("Shape", [last], ["shape"], name="shape"),
            onnx.helper.make_node("Cast", [last], ["as_int"], name="cast", to=onnx.TensorProto.INT64),
        ]
    )
    inferred = onnx.shape_inference.infer_shapes(model).graph
    infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
    expected = {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    expected |= {t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    got = model_io.float_tensors(model)
    assert got == expected and "shape" not in got and "as_int" not in got


def test_opset_conversion_in_place_is_onnxs_conversion_of_the_whole_model():
    """The oracle: onnx's version converter on the model with its weights. Same nodes, same weights (the very
    same tensors, converted in place), same outputs."""
    model = cnn(opset=11)
    w_before = {t.name: t.raw_data for t in model.graph.initializer}
    oracle = version_converter.convert_version(cnn(opset=11), 13)
    converted, note = model_io.ensure_opset(model, 13, "per-channel Q/DQ")
    assert converted is model and note == "opset upgraded 11 -> 13 (per-channel Q/DQ)"
    assert converted.opset_import == oracle.opset_import and converted.ir_version == oracle.ir_version
    assert list(converted.graph.node) == list(oracle.graph.node)
    assert list(converted.graph.input) == list(oracle.graph.input)
    assert {t.name: t.raw_data for t in converted.graph.initializer} == w_before
    onnx.checker.check_model(converted, full_check=True)
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_array_equal(run(converted, x)[0], run(oracle, x)[0])


def test_a_conversion_that_fails_leaves_the_model_as_it_was(monkeypatch):
    model = cnn(opset=11)
    before = model.SerializeToString()

    def fails(m, target):
        raise RuntimeError("no adapter")

    monkeypatch.setattr(model_io.version_converter, "convert_version", fails)
    with pytest.raises(InputError, match="could not upgrade it .RuntimeError: no adapter"):
        model_io.ensure_opset(model, 13, "per-channel Q/DQ")
    assert model.SerializeToString() == before


def test_a_session_file_holds_the_weights_outside_and_leaves_the_model_as_it_was(tmp_path):
    model = cnn()
    before = model.SerializeToString()
    path = model_io.save_for_session(model, tmp_path, "s.onnx")
    assert model.SerializeToString() == before
    assert model_io.external_data_files(path) == {tmp_path / "s.onnx.data"}  # whatever the model's size
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_array_equal(run(path, x)[0], run(model, x)[0])


def test_a_copy_without_some_initializers_is_the_model_less_exactly_those():
    model = cnn()
    model.metadata_props.add(key="k", value="v")
    copy = model_io.copy_without(model, {"w2", "fc_w"})
    oracle = onnx.ModelProto()
    oracle.CopyFrom(model)
    keep = [t for t in oracle.graph.initializer if t.name not in ("w2", "fc_w")]
    del oracle.graph.initializer[:]
    oracle.graph.initializer.extend(keep)
    assert copy == oracle
