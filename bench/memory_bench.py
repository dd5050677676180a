"""Peak resident memory of `qcli quantize` against the model's size, and of onnxruntime's quantize_static.

    python bench/memory_bench.py                      # ~200 MB and ~2.3 GB models, w8a8 and w4a16
    python bench/memory_bench.py --models small --schemes w8a8
    python bench/memory_bench.py --models minilm,rec,det,cls --schemes w8a8   # models run_bench.py fetched
    python bench/memory_bench.py --tools qcli         # without onnxruntime's quantizer
    python bench/memory_bench.py --clean              # delete the models afterwards (2.5 GB of disk)

The synthetic models are chains of square MatMuls, under bench/.cache/memory/<name>/ with six calibration
batches: the small one a single file (as models under 2 GB usually are), the big one with its weights in an
external-data file (written a tensor at a time, never two copies in memory). The others are the benchmark's
own models and calibration files (bench/.cache/<name>/, made by run_bench.py). Every quantization runs in its
own process; its peak RSS is the kernel's figure for that child (os.wait4), so nothing here (psutil or a
sampling thread) adds to or misses part of it. For w8a8, onnxruntime's quantize_static (QDQ, per channel,
MinMax, uint8 activations, int8 weights: as run_bench.py's "ort-static") quantizes the same model on the same
files. QCLI_ROOT=<checkout> measures another checkout of qcli with the same models (e.g. `git archive HEAD`
unpacked in /tmp).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "memory"
MODELS = {"small": (12, 2048, False), "big": (34, 4096, True)}  # name -> (MatMuls, width, external data)
FETCHED = ("minilm", "rec", "det", "cls")  # bench/.cache/<name>/model.onnx and calib/, from run_bench.py
BATCH, CALIB_FILES = 4, 6
PROTOBUF_LIMIT = 2**31


def build(folder: Path, layers: int, dim: int, external: bool, seed: int = 0) -> Path:
    """x [BATCH, dim] -> MatMul(w0) -> ... -> MatMul(w{layers-1}) -> y, weights ~ N(0, 1/dim) (norm-preserving)."""
    path = folder / "model.onnx"
    if path.is_file():
        return path
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "calib").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    data = folder / "model.onnx.data"
    inits, nodes = [], []
    with open(data, "wb") as f:
        for i in range(layers):
            w = rng.standard_normal((dim, dim), dtype=np.float32)
            w *= np.float32(1 / np.sqrt(dim))
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(f.tell())), ("length", str(w.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            f.write(w.data)
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [f"h{i}" if i else "x", f"w{i}"], [f"h{i + 1}"], name=f"mm{i}"))
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k in range(CALIB_FILES):
        np.save(folder / "calib" / f"{k:02d}.npy", rng.standard_normal((BATCH, dim), dtype=np.float32))
    onnx.save(model, str(path))  # the weights are references already: only the graph is written
    if not external:
        onnx.save(onnx.load(str(path)), str(path))  # one self-contained file
        data.unlink()
    return path


def model_size(path: Path) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))


def peak_rss(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, int, float, str]:
    """Run a command; its exit code, peak RSS (bytes), wall seconds and the tail of its stderr."""
    t0 = time.perf_counter()
    with subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t0, err.strip()[-300:]


def ort_static(model: Path, calib: Path, out: Path) -> None:
    """onnxruntime's quantize_static as run_bench.py runs it, with external data above protobuf's limit
    (in the child process this script starts for it)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    sys.path.insert(0, str(HERE))
    from common import iter_samples

    names = input_names(model)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter_samples(calib, names)

        def get_next(self):
            return next(self.samples, None)

    quantize_static(
        str(model),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        use_external_data_format=model_size(model) >= PROTOBUF_LIMIT,
    )


def input_names(model: Path) -> list[str]:
    """The model's inputs that are not initializers. The model read for them is freed and its memory handed
    back (glibc), so onnxruntime's figure does not include it."""
    g = onnx.load(str(model), load_external_data=False).graph
    names = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
    del g
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return names


def locate(name: str) -> Path | None:
    """The model file of a benchmark model (built here when synthetic); None when it is not there."""
    if name in MODELS:
        layers, dim, external = MODELS[name]
        return build(CACHE / name, layers, dim, external)
    path = HERE / ".cache" / name / "model.onnx"
    return path if path.is_file() and (path.parent / "calib").is_dir() else None


def commands(model: Path, scheme: str, tools: list[str], out: Path, qcli_args: str, root: Path) -> dict:
    """tool -> (command, working directory) for one model and scheme."""
    calib = str(model.parent / "calib")
    runs = {}
    if "qcli" in tools:
        cmd = [sys.executable, "-m", "qcli", "quantize", str(model), "--scheme", scheme, "--calib", calib]
        runs["qcli"] = ([*cmd, "-o", str(out / f"q.{scheme}.onnx"), *qcli_args.split()], root)
    if "ort" in tools and scheme == "w8a8":
        child = [sys.executable, str(Path(__file__).resolve()), "--ort-child"]
        runs["ort"] = ([*child, str(model), calib, str(out)], HERE)
    return runs


def main() -> None:
    if sys.argv[1:2] == ["--ort-child"]:
        model, calib, out = map(Path, sys.argv[2:5])
        ort_static(model, calib, out / "ort.onnx")
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small,big", help="comma-separated: " + ", ".join([*MODELS, *FETCHED]))
    ap.add_argument("--schemes", default="w8a8,w4a16")
    ap.add_argument("--tools", default="qcli,ort", help="qcli, and ort: onnxruntime's quantize_static (w8a8 rows)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the median is shown (peaks vary by ~10%%)")
    ap.add_argument("--qcli-args", default="", help="more `qcli quantize` options, e.g. '--placement static'")
    ap.add_argument("--clean", action="store_true", help="delete the synthetic models when done")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    opts = ap.parse_args()
    env = dict(os.environ)
    root = Path(os.environ.get("QCLI_ROOT") or HERE.parent).resolve()  # `python -m` imports from its cwd first
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    rows = []
    print(f"{'model':<7}{'scheme':<8}{'tool':<6}{'size MB':>9}{'peak RSS MB':>13}{'ratio':>7}{'wall s':>8}  exit")
    for name in opts.models.split(","):
        model = locate(name)
        if model is None:
            print(f"{name:<7}(not in bench/.cache: run bench/run_bench.py first)")
            continue
        size, out = model_size(model), model.parent / "out"
        for scheme in opts.schemes.split(","):
            for tool, (cmd, cwd) in commands(model, scheme, opts.tools.split(","), out, opts.qcli_args, root).items():
                runs = []
                for _ in range(opts.repeat):
                    out.mkdir(exist_ok=True)
                    runs.append(peak_rss(cmd, env, cwd))
                    shutil.rmtree(out, ignore_errors=True)
                code, rss, wall, err = sorted(runs, key=lambda r: r[1])[len(runs) // 2]
                row = {"model": name, "scheme": scheme, "tool": tool, "size": size, "peak_rss": rss, "wall_s": wall}
                row |= {"exit": code, "peak_rss_runs": [r[1] for r in runs]}
                rows.append(row)
                peaks = row["peak_rss_runs"]
                spread = f"  ({min(peaks) / 1e6:.0f}-{max(peaks) / 1e6:.0f})" if len(runs) > 1 else ""
                figures = f"{size / 1e6:>9.0f}{rss / 1e6:>13.0f}{rss / size:>7.2f}{wall:>8.1f}"
                print(f"{name:<7}{scheme:<8}{tool:<6}{figures}  {code}{spread}", flush=True)
                if code:
                    print("   ", err.splitlines()[-1] if err else "(no message)")
        if opts.clean and name in MODELS:
            shutil.rmtree(model.parent, ignore_errors=True)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
