"""Property-based tests (hypothesis): the numerical core, the observers fed in any batch split, the recipe
parser, and the model loader on mutated model bytes and protobuf fields. `make test` runs a short slice with a
fixed seed (derandomized); `make fuzz` runs them long, over the seeds in tests/fuzz_seeds.txt. Any crash found
becomes a regression test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcli.calibration.observers import StreamingHistogram
from qcli.core import qparams as qp
from qcli.core.errors import InputError
from qcli.io import model_io
from qcli.io.feeds import InputSpec
from qcli.io.recipes import parse_recipe

EXAMPLES = int(os.environ.get("QCLI_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize="QCLI_FUZZ_EXAMPLES" not in os.environ,  # make test: the same examples every run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODEL = (Path(__file__).resolve().parents[1] / "sample_models" / "cnn" / "model.onnx").read_bytes()
finite = st.floats(-(2.0**64), 2.0**64, allow_nan=False, allow_infinity=False, width=32).map(float)


@FUZZ
@given(lo=finite, hi=finite, symmetric=st.booleans(), qtype=st.sampled_from([qp.INT8, qp.UINT8, qp.INT4, qp.UINT4]))
def test_qparams_cover_the_range_and_keep_zero_exact(lo, hi, symmetric, qtype):
    lo, hi = min(lo, hi), max(lo, hi)
    p = qp.from_range(np.array(lo), np.array(hi), qtype, symmetric)
    assert np.isfinite(p.scale).all() and (p.scale > 0).all()
    assert qtype.qmin <= int(p.zero_point) <= qtype.qmax
    assert qp.dequantize(qp.quantize(np.zeros(3, np.float32), p), p).tolist() == [0.0, 0.0, 0.0]  # 0 is exact
    x = np.array([min(lo, 0.0), max(hi, 0.0)], np.float32)
    back = qp.dequantize(qp.quantize(x, p), p)
    assert np.all(np.abs(back.astype(np.float64) - x) <= float(p.scale) * 1.01)  # within a step of the range


@FUZZ
@given(
    data=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_a_histogram_fed_in_any_batch_split_equals_one_fed_at_once(data, cuts):  # fmt: skip
    x = np.array(data, np.float32)
    whole, split = StreamingHistogram(), StreamingHistogram()
    whole.update(x)
    bounds = sorted({0, len(x), *(c for c in cuts if c <= len(x))})
    for a, b in zip(bounds, bounds[1:]):
        split.update(x[a:b])
    assert np.array_equal(whole.counts, split.counts) and (whole.rmin, whole.rmax) == (split.rmin, split.rmax)
    assert (whole.exponent, whole.offset, whole.zeros) == (split.exponent, split.offset, split.zeros)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
KEYS = ["kind", "resize", "crop", "mean", "std", "layout", "color", "dtype", "letterbox", "value", "sample_rate"]
KEYS += ["frame", "hop", "context", "from", "tokenizer", "max_length", "bogus"]
kinds = st.sampled_from(["image", "text", "audio", "constant", "state", "nope"])
table = st.dictionaries(st.sampled_from(KEYS), values, max_size=6) | st.builds(lambda k: {"kind": k}, kinds)
tables = st.dictionaries(st.sampled_from(["input", "state", "other"]), table, max_size=3)


@FUZZ
@given(tables=tables)
def test_any_recipe_is_parsed_or_refused_with_an_input_error(tables, tmp_path_factory):
    specs = [
        InputSpec("input", np.dtype(np.float32), (1, 3, 8, 8)),
        InputSpec("state", np.dtype(np.float32), (2, 1, 4)),
    ]
    try:
        parse_recipe({"inputs": tables}, specs, tmp_path_factory.getbasetemp(), "fuzz")
    except InputError:
        pass


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(MODEL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.integers(1, len(MODEL)))  # fmt: skip
def test_mutated_model_bytes_load_or_are_refused_with_an_input_error(edits, cut, tmp_path_factory):
    data = bytearray(MODEL)
    for pos, byte in edits:
        data[pos] = byte
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(bytes(data[:cut]))
    try:
        model_io.load(path)
    except InputError:
        pass


@FUZZ
@given(dims=st.lists(st.integers(-5, 2**40), max_size=4), field=st.sampled_from(["dims", "input", "op", "domain"]))
def test_mutated_protobuf_fields_load_or_are_refused_with_an_input_error(dims, field, tmp_path_factory):
    m = onnx.load_from_string(MODEL)
    if field == "dims":
        m.graph.initializer[0].ClearField("dims")
        m.graph.initializer[0].dims.extend(dims)
    elif field == "input":
        m.graph.node[len(dims) % len(m.graph.node)].input[0] = "nowhere"
    elif field == "op":
        m.graph.node[0].op_type = "NoSuchOp"
    else:
        m.graph.node[0].domain = "com.nowhere"
    path = tmp_path_factory.mktemp("fuzz") / "m.onnx"
    path.write_bytes(m.SerializeToString())
    try:
        model_io.load(path)
    except InputError:
        pass
