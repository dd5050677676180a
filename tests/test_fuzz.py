"""Property-based tests (hypothesis): the numerical core (scales and zero points, int4/int2 packing), the
observers fed in any batch split, the recipe and overrides parsers, saved plan files with any field mutated, and
the model loader on mutated model bytes and protobuf fields. `make test` runs a short slice with a
fixed seed (derandomized); `make fuzz` runs them long, over the seeds in tests/fuzz_seeds.txt. Any crash found
becomes a regression test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcli.calibration.observers import StreamingHistogram
from qcli.calibration.overrides import load as load_overrides
from qcli.core import codec
from qcli.core import qparams as qp
from qcli.core.errors import InputError
from qcli.io import model_io, planfile
from qcli.io.feeds import InputSpec
from qcli.io.recipes import parse_recipe
from qcli.passes.nbits import pack

EXAMPLES = int(os.environ.get("QCLI_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize="QCLI_FUZZ_EXAMPLES" not in os.environ,  # make test: the same examples every run
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODEL_PATH = Path(__file__).resolve().parents[1] / "sample_models" / "cnn" / "model.onnx"
MODEL = MODEL_PATH.read_bytes()
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


@FUZZ
@given(
    bits=st.sampled_from([2, 4, 8]),
    rows=st.integers(1, 4),
    data=st.data(),
)
def test_packing_matches_onnx_and_unpacks_to_the_codes(bits, rows, data):
    """nbits.pack against onnx's own int4 packing (numpy_helper, low nibble first) and against unpacking."""
    per = 8 // bits
    length = per * data.draw(st.integers(1, 6))
    codes = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=rows * length, max_size=rows * length)))
    codes = codes.reshape(rows, length)
    packed = pack(codes, bits)
    unpacked = np.stack([(packed >> np.uint8(bits * i)) & np.uint8(2**bits - 1) for i in range(per)], axis=-1)
    np.testing.assert_array_equal(unpacked.reshape(rows, length), codes)
    if bits == 4:
        ref = onnx.numpy_helper.from_array(codes.astype(ml_dtypes.uint4), "t").raw_data
        assert packed.tobytes() == ref


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, width=32)
    | st.text(max_size=8)
)
entry = st.dictionaries(st.sampled_from(["calibrator", "percentile", "precision", "bogus"]), scalars, max_size=3)
overrides = st.dictionaries(
    st.sampled_from(["tensors", "nodes", "bogus"]), st.dictionaries(st.text(max_size=8), entry, max_size=3), max_size=3
)


def _toml(doc: dict) -> str:
    """A small TOML writer for [section."key"] tables of scalars (None leaves the key out)."""
    lines = []
    for section, tables in doc.items():
        for key, entry in tables.items():
            lines.append(f"[{section}.{json.dumps(key)}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items() if v is not None]
    return "\n".join(lines) + "\n"


@FUZZ
@given(doc=overrides, raw=st.text(max_size=60))
def test_any_overrides_file_is_read_or_refused_with_an_input_error(doc, raw, tmp_path_factory):
    folder = tmp_path_factory.mktemp("overrides")
    for name, text in (("doc.toml", _toml(doc)), ("raw.toml", raw)):
        (folder / name).write_text(text, encoding="utf-8")
        try:
            load_overrides(folder / name)
        except InputError:
            pass


PLAN = None


def _saved_plan() -> dict:
    """A real saved plan of the sample CNN (made once per session)."""
    global PLAN
    if PLAN is None:
        import tempfile

        import qcli
        from qcli.core.config import QuantConfig

        cnn = MODEL_PATH.parent
        with tempfile.TemporaryDirectory() as tmp:
            config = QuantConfig.of(placement="static")
            out, plan = Path(tmp) / "q.onnx", Path(tmp) / "plan.json"
            qcli.quantize(MODEL_PATH, config, cnn / "calib", out, latency_runs=1, write_report=False, save_plan=plan)
            PLAN = json.loads(plan.read_text())
    return json.loads(json.dumps(PLAN))


@FUZZ
@given(path=st.lists(st.sampled_from(["plan", "config", "state", "model", "nodes", "activations", "weights", 0]),
                     min_size=1, max_size=4), value=values)  # fmt: skip
def test_a_mutated_saved_plan_is_read_or_refused_with_an_input_error(path, value, tmp_path_factory):
    """A plan file is untrusted input: any field replaced by any JSON value is read or refused, never a crash."""
    d = _saved_plan()
    node = d
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and node:
            node = node[0]
    last = path[-1]
    if isinstance(node, dict):
        node[str(last)] = value
    elif isinstance(node, list) and node:
        node[0] = value
    d["sha256"] = planfile.digest({k: d[k] for k in planfile.SavedPlan.__dataclass_fields__ if k in d})  # re-signed
    f = tmp_path_factory.mktemp("plan") / "p.json"
    f.write_text(json.dumps(d))
    try:
        saved = planfile.read(f)
        codec.load(saved.plan)
        codec.config_from_dict(saved.config)
    except InputError:
        pass
