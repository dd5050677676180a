"""Calibration alone, per method: wall time and peak memory of qcli's and onnxruntime's calibrators
on the same samples, at 8 and at 64 samples (does memory grow with the number of samples?).

    python bench/calib_bench.py [--models rec,det,minilm] [--sizes 8,64]
    python bench/calib_bench.py child TOOL METHOD MODEL DATA      (one measurement; run_bench uses the above)

Each measurement runs in its own process (peak RSS from os.wait4), capped at MEMORY_CAP_GB of address
space so that a calibrator that would exhaust the machine fails with MemoryError instead. The timed part
is the calibration itself: for qcli, `calibrate()` over the tensors its planner watches; for onnxruntime,
`create_calibrator(...).collect_data()` and `compute_data()` over the op types its QDQ quantizer handles.
Samples: 64 more images painted like the calibration set (det, rec) and 64 sentence pairs (minilm, one
sample of its own length each: ragged shapes); the 8-sample set is the first 8 of them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import BENCH, CACHE, ROOT, iter_samples

PY = sys.executable
MEMORY_CAP_GB = 16
SIZES = (8, 64)
MODELS = ("rec", "det", "minilm")
QCLI_METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
ORT_METHODS = ("minmax", "percentile", "entropy")


def sample_dir(model: str, n: int) -> Path:
    return CACHE / model / f"calib-n{n}"


def make_samples(model: str, sizes=SIZES) -> None:
    """Write calib-n8/ and calib-n64/ once (fixed seed; never shared with the eval set)."""
    if all(sample_dir(model, n).is_dir() for n in sizes):
        return
    sys.path.insert(0, str(BENCH))
    import make_inputs as mi

    rng = np.random.default_rng(4321)
    if model == "minilm":
        from wordpiece import SENTENCES, WordPiece

        tok = WordPiece(CACHE / "minilm" / "hf" / "vocab.txt")
        calib = SENTENCES[: len(SENTENCES) // 2]
        pairs = [(calib[i % len(calib)], calib[(i * 7 + 3) % len(calib)]) for i in range(max(sizes))]
        samples = [tok.batch([f"{a} {b}"]) for a, b in pairs]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits().images / 16.0
        painter = mi.GlyphPainter(digits[rng.permutation(len(digits))[: len(digits) // 2]], rng)
        make = {"det": mi.det_sample, "rec": mi.rec_sample}[model]
        samples = [make(painter) for _ in range(max(sizes))]
    for n in sizes:
        folder = sample_dir(model, n)
        folder.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(samples[:n]):
            if isinstance(s, dict):
                np.savez(folder / f"{i:03d}.npz", **s)
            else:
                np.save(folder / f"{i:03d}.npy", s)


def child(tool: str, method: str, model: Path, data: Path) -> dict:
    if tool == "qcli":
        from qcli.calibration.calibrate import calibrate
        from qcli.core.config import QuantConfig
        from qcli.io import model_io
        from qcli.passes.preprocess import preprocess
        from qcli.schemes.w8a8.planner import W8A8Planner

        m, _ = preprocess(model_io.load(model), inplace=True)
        config = QuantConfig.of(calibrator=method)
        watch = W8A8Planner(m, config, model_io.float_tensors(m)).watch_list()
        inits = {i.name for i in m.graph.initializer}
        names = [i.name for i in m.graph.input if i.name not in inits]
        start = time.perf_counter()
        stats = calibrate(m, watch, iter_samples(data, names), config)
        return {"seconds": time.perf_counter() - start, "tensors": len(stats)}
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry

    names = [i.name for i in ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter_samples(data, names)

        def get_next(self):
            return next(self.it, None)

    kind = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    kind["entropy"] = CalibrationMethod.Entropy
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cal = create_calibrator(model, list(QDQRegistry), str(Path(tmp) / "aug.onnx"), calibrate_method=kind[method])
        cal.collect_data(Reader())
        ranges = cal.compute_data()
        return {"seconds": time.perf_counter() - start, "tensors": len(ranges.data)}


def _cap_memory() -> None:
    cap = MEMORY_CAP_GB << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def measure(tool: str, method: str, model: str, n: int) -> dict:
    path = CACHE / model / "model.onnx"
    cmd = [PY, str(Path(__file__)), "child", tool, method, str(path), str(sample_dir(model, n))]
    row = {"model": model, "tool": tool, "method": method, "samples": n}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=_cap_memory)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    row["peak_mb"] = usage.ru_maxrss / 1024
    if os.waitstatus_to_exitcode(status) == 0:
        row |= json.loads(text.strip().splitlines()[-1])
    else:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        oom = "MemoryError" in text or "bad_alloc" in text or "Failed to allocate" in text
        ragged = "inhomogeneous shape" in text
        row["error"] = (
            f"out of memory at the {MEMORY_CAP_GB} GB cap"
            if oom
            else "fails on samples of different shapes (ValueError: inhomogeneous shape)"
            if ragged
            else last[0][:200]
        )
    return row


def run(models=MODELS, sizes=SIZES) -> list[dict]:
    rows = []
    for model in models:
        if not (CACHE / model / "model.onnx").exists():
            continue
        make_samples(model, sizes)
        for tool, methods in (("qcli", QCLI_METHODS), ("onnxruntime", ORT_METHODS)):
            for method in methods:
                for n in sizes:
                    print(f"[calib {model}] {tool} {method} n={n} ...", end=" ", flush=True)
                    row = measure(tool, method, model, n)
                    rows.append(row)
                    print(row.get("error") or f"{row['seconds']:.1f} s, {row['peak_mb']:.0f} MB", flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        _, _, tool, method, model, data = sys.argv
        print(json.dumps(child(tool, method, Path(model), Path(data))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    rows = run([m for m in args.models.split(",") if m], [int(n) for n in args.sizes.split(",")])
    (BENCH / "calib_results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
