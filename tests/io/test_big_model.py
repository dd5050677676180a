"""A model past protobuf's 2 GB limit, quantized through the command line in its own process.

The model: two embedding tables of 1.1 GB each (external data) read by Gathers and added, then MatMul -> Relu
-> MatMul. The tables stay float (--exclude 'gather*'), so the output is past the limit too and must be
written with external data. The float model run by onnxruntime is the oracle; the ids looked up include the
second table's last rows, which lie beyond the first 2**31 bytes of the data file.

Slow (2.5 minutes on 2 cores: gigabytes are read, copied and written several times) and needs 10 GB of free
disk and memory: marked `big`, and run only with QCLI_BIG_TESTS=1.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from checks import sqnr
from onnx import TensorProto, helper, numpy_helper

from qcli.io import model_io

ROWS, DIM, HIDDEN, OUT = 1_075_000, 256, 256, 16  # each table: 1.1 GB of float32
TABLES = 2  # each under 2 GB: one tensor over 2 GB fails in passes/preprocess.drop_unused_initializers (extend)
CHUNK = 8192  # table rows generated and written at a time (8 MB)
TABLE_BYTES = ROWS * DIM * 4
BATCH, CALIB_FILES = 64, 6
NEEDED = 10e9  # free disk and memory this test needs

pytestmark = [
    pytest.mark.big,
    pytest.mark.skipif(os.environ.get("QCLI_BIG_TESTS") != "1", reason="a 2.2 GB model: set QCLI_BIG_TESTS=1"),
]


def _available_memory() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0.0


def _table(f, name: str, base: np.ndarray, k: int) -> TensorProto:
    """Append table k to the data file a chunk at a time (never whole in memory): a random block plus an
    offset per chunk and table, so every row differs. Returns its header."""
    offset = f.tell()
    for start in range(0, ROWS, CHUNK):
        f.write((base[: min(CHUNK, ROWS - start)] + np.float32(k + start / ROWS)).data)
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[ROWS, DIM])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "big.onnx.data"), ("offset", str(offset)), ("length", str(TABLE_BYTES))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _build(folder):
    """Write big.onnx and big.onnx.data, and calibration ids."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((CHUNK, DIM), dtype=np.float32)
    with open(folder / "big.onnx.data", "wb") as f:
        tables = [_table(f, f"table{k}", base, k) for k in range(TABLES)]
    w1 = (rng.standard_normal((DIM, HIDDEN)) / np.sqrt(DIM)).astype(np.float32)
    w2 = (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32)
    nodes = [helper.make_node("Gather", [f"table{k}", "ids"], [f"e{k}"], name=f"gather{k}") for k in range(TABLES)]
    nodes += [
        helper.make_node("Sum", [f"e{k}" for k in range(TABLES)], ["e"], name="sum"),
        helper.make_node("MatMul", ["e", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding_mlp",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, OUT])],
        [*tables, numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "big.onnx")
    (folder / "calib").mkdir()
    for k in range(CALIB_FILES):
        ids = rng.integers(0, ROWS, BATCH, dtype=np.int64)
        ids[:2] = (k, ROWS - 1 - k)  # the first and the last rows of the table
        np.save(folder / "calib" / f"{k}.npy", ids)
    return folder / "big.onnx"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    if shutil.disk_usage(folder).free < NEEDED or _available_memory() < NEEDED:
        pytest.skip("needs 10 GB of free disk and memory")
    yield _build(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def work(tmp_path):
    """A folder for one output (2.2 GB), removed whether the test passes or not."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def _quantize(model, out, *args) -> tuple[int, str, str, int]:
    """`qcli quantize` in a process of its own: exit code, stdout, stderr and peak resident memory (bytes)."""
    cmd = [sys.executable, "-m", "qcli", "quantize", str(model), "-o", str(out), "--json", *map(str, args)]
    logs = out.parent / "stdout.txt", out.parent / "stderr.txt"
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(p.pid, 0)  # the kernel's peak RSS of this child alone
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, logs[0].read_text(), logs[1].read_text(), usage.ru_maxrss * 1024


def test_the_table_lies_past_the_protobuf_limit(big):
    """The premise: the model cannot be one protobuf message (so every step must avoid serializing it)."""
    assert TABLES * TABLE_BYTES > 2**31 and (big.parent / "big.onnx.data").stat().st_size == TABLES * TABLE_BYTES
    assert model_io.model_bytes(model_io.load(big)) > 2**31


@pytest.mark.parametrize(
    "scheme,args,floor,max_rss",
    # SQNR measured 38.8 and 18.9 dB
    [("w8a8", ["--exclude", "gather*"], 35.0, 3.9), ("w4a16", ["--exclude", "gather*"], 16.0, 2.8)],
    ids=["w8a8", "w4a16"],
)
def test_a_model_past_2gb_quantizes_through_the_cli(big, work, scheme, args, floor, max_rss):
    """Exit 0, the output and its data file, outputs close to the float model's, and peak memory within
    `max_rss` times the model's size. Measured: w8a8 3.55x (the float model and its quantized copy, whose
    tables stay float, both in memory; passes copy initializers with extend()), w4a16 2.55x before the
    weight-format choice (3.55x with it). Both 2.5x and 1.5x once the float model is held once."""
    out = work / f"q.{scheme}.onnx"
    code, stdout, stderr, peak = _quantize(big, out, "--scheme", scheme, "--calib", big.parent / "calib", *args)
    assert code == 0, stderr[-2000:]
    size = big.stat().st_size + TABLES * TABLE_BYTES
    assert peak < max_rss * size, f"peak RSS {peak / 1e9:.2f} GB for a {size / 1e9:.2f} GB model"
    data = model_io.external_data_files(out)
    assert data == {work / (out.name + ".data")} and all(p.stat().st_size > 2**31 for p in data)
    report = json.loads(stdout)
    assert report["size"]["candidate_bytes"] == out.stat().st_size + sum(p.stat().st_size for p in data)
    feeds = [{"ids": np.load(p)} for p in sorted((big.parent / "calib").glob("*.npy"))]
    ref = [_ort(big, f) for f in feeds]
    got = [_ort(out, f) for f in feeds]
    measured = sqnr(np.concatenate(ref), np.concatenate(got))
    assert measured > floor, measured


def _ort(path, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]
