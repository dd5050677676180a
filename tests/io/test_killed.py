"""Killed at any moment: SIGKILL mid-save leaves the previous file or the complete new one, and the next write
into the folder removes what the killed run left (only that of processes that are gone); SIGTERM is Ctrl-C; and
two static runs in separate processes (different hash seeds) write the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcli.io.model_io import remove_strays, save_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]


def big_model(n: int = 12) -> onnx.ModelProto:
    """~25 MB of weights: a save that takes long enough to be killed in the middle."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((512, 1024)).astype(np.float32), f"w{i}") for i in range(n)]
    nodes = [helper.make_node("Identity", [f"w{i}"], [f"y{i}"]) for i in range(n)]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [512, 1024]) for i in range(n)]
    m = helper.make_model(helper.make_graph(nodes, "g", [], outs, inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_strays_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "q.onnx"
    dead, me = dead_pid(), os.getpid()
    (tmp_path / f".q.onnx.qcli-{dead}.abc").mkdir()
    (tmp_path / f".q.onnx.qcli-{dead}.abc" / "q.onnx").write_bytes(b"half")
    (tmp_path / f".q.onnx.report.json.qcli-{dead}.xyz").write_text("{")
    (tmp_path / f".q.onnx.qcli-{me}.live").mkdir()  # a run still writing (this process)
    (tmp_path / ".q.onnx.other").write_text("not ours")  # not a qcli temporary name
    save_atomic(big_model(1), out)
    write_text_atomic(tmp_path / "q.onnx.report.json", "{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".q.onnx.other", f".q.onnx.qcli-{me}.live", "q.onnx", "q.onnx.report.json"]
    assert remove_strays(out) == []


SAVER = """
import sys, onnx
sys.path.insert(0, {tests!r})
from io_killed_model import big_model
from qcli.io.model_io import save_atomic
m = big_model()
print("ready", flush=True)
while True:
    save_atomic(m, {out!r})
"""


def test_sigkill_at_any_moment_of_the_save_leaves_the_old_file_or_the_new_one_whole(tmp_path):
    out = tmp_path / "q.onnx"
    (tmp_path / "io_killed_model.py").write_text(Path(__file__).read_text().split("def dead_pid")[0])
    script = SAVER.format(tests=str(tmp_path), out=str(out))
    strays = 0
    for delay in (0.05, 0.2, 0.35, 0.5, 0.8, 1.1):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        strays += len([p for p in tmp_path.iterdir() if ".qcli-" in p.name])
        if out.exists():
            m = onnx.load(out)  # whole: it loads, every tensor complete
            onnx.checker.check_model(m)
            assert len(m.graph.initializer) == 12
        save_atomic(big_model(1), tmp_path / "other.onnx")  # the next write into the folder: other files' strays
        write_text_atomic(out.with_suffix(".onnx.report.json"), "{}")
        save_atomic(big_model(1), out)  # and the model's own
        assert not [p for p in tmp_path.iterdir() if ".qcli-" in p.name], sorted(os.listdir(tmp_path))
    assert strays > 0  # some kill did land in the middle of a save


def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    cnn = ROOT / "sample_models" / "cnn"
    args = [sys.executable, "-m", "qcli", "quantize", str(cnn / "model.onnx"), "--calib", str(cnn / "images" / "calib"),
            "--recipe", str(cnn / "recipe.toml"), "-o", str(tmp_path / "q.onnx")]  # fmt: skip
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = ""
    while "qcli: calibrating" not in seen:  # the work has begun
        seen += p.stderr.readline()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    err = seen + err
    assert p.returncode == 130 and "interrupted:" in err and "Traceback" not in err, err
    assert not [x for x in tmp_path.iterdir() if ".qcli-" in x.name]


def test_static_runs_in_separate_processes_write_the_same_bytes(tmp_path):
    cnn = ROOT / "sample_models" / "cnn"
    outs = []
    for name, seed in (("a", "1"), ("b", "2")):
        args = [sys.executable, "-m", "qcli", "quantize", str(cnn / "model.onnx"), "--calib", str(cnn / "calib"),
                "--placement", "static", "--no-html", "-o", str(tmp_path / name / "q.onnx")]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=os.environ | {"PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        outs.append((tmp_path / name / "q.onnx").read_bytes())
    assert outs[0] == outs[1]
