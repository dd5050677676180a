"""Record the md5 of every model qcli writes with deterministic settings, to check a refactor byte for byte.

    python bench/output_md5.py --qcli .venv/bin/qcli --json /tmp/md5_new.json --compare bench/output_md5_base.json
    python bench/output_md5.py --json /tmp/md5_new.json --compare bench/output_md5_base.json   # compare only

Runs `qcli quantize` once per (model, variant), one process at a time, every variant with --placement static
(no timing decides anything), and records per pair the exit code, the wall seconds, the md5 of each file
written beside the model (the .onnx and any external data; not the reports, which hold timings) and, on a
failure, stderr's last line. Calibration and eval folders as `make bench` passes them: W8A8 and dynamic as
run_bench.py (W8A8 --calib, no --eval), weight-only as weight_only_bench.py (--eval, --calib for the data-driven
algorithms). Models: sample_models/{cnn,attention} and those `make bench` prepares in bench/.cache (skipped
when absent). --reduce-range is left to auto-detect, so records from CPUs with and without VNNI differ.
With --compare, prints every pair whose exit code, error or md5s differ from the base record and exits 1.
Without --qcli, --json is read instead of written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("cnn", "attention", "det", "rec", "cls", "dwsep", "effnet", "yolo", "yolox", "picodet", "minilm")
STATIC = ("--placement", "static")
WEIGHT_ONLY = {
    "w4a16-qdq": ("--scheme", "w4a16", "--format", "qdq"),
    "w4a16-ort": ("--scheme", "w4a16", "--format", "ort"),
    "w8a16-qdq": ("--scheme", "w8a16", "--format", "qdq"),
    "w4a16-gptq": ("--scheme", "w4a16", "--format", "qdq", "--weight-algo", "gptq", "--calib", "CALIB"),
    "w4a16-awq": ("--scheme", "w4a16", "--format", "qdq", "--weight-algo", "awq", "--calib", "CALIB"),
    "w4a16-adaround": ("--scheme", "w4a16", "--format", "qdq", "--weight-algo", "adaround", "--calib", "CALIB"),
    "w4a16-clip": ("--scheme", "w4a16", "--format", "qdq", "--clip-search", "--calib", "CALIB"),
}
VARIANTS = {
    "w8a8": ("--calib", "CALIB"),
    "dynamic": ("--scheme", "dynamic"),
    **{k: (*v, "--eval", "EVAL") for k, v in WEIGHT_ONLY.items()},
}
SAMPLE_ONLY = {  # W8A8 options, on the sample models only
    "w8a8-eval": ("--calib", "CALIB", "--eval", "EVAL"),
    "w8a8-entropy": ("--calib", "CALIB", "--calibrator", "entropy"),
    "w8a8-percentile": ("--calib", "CALIB", "--calibrator", "percentile"),
    "w8a8-equalize": ("--calib", "CALIB", "--equalize"),
    "w8a8-smooth-quant-0.5": ("--calib", "CALIB", "--smooth-quant", "0.5"),
}
TIMEOUT_S = 1800


def model_dir(name: str) -> Path:
    return ROOT / ("sample_models" if name in ("cnn", "attention") else "bench/.cache") / name


def md5(path: Path) -> str:
    """As md5sum prints it (streamed: external data can be large)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def variants(name: str) -> dict[str, tuple[str, ...]]:
    return VARIANTS | SAMPLE_ONLY if name in ("cnn", "attention") else VARIANTS


def run_one(qcli: list[str], folder: Path, args: tuple[str, ...]) -> dict:
    subst = {"CALIB": str(folder / "calib"), "EVAL": str(folder / "eval")}
    with tempfile.TemporaryDirectory(prefix="qcli-md5-") as tmp:
        out = Path(tmp) / "out" / "model.onnx"
        out.parent.mkdir()
        cmd = [*qcli, "quantize", str(folder / "model.onnx"), *(subst.get(a, a) for a in args), *STATIC, "-o", str(out)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=TIMEOUT_S)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, stderr = "timeout", ""
        row = {"returncode": code, "seconds": round(time.perf_counter() - start, 2)}
        written = sorted(p for p in out.parent.iterdir() if not re.search(r"\.report\.(json|md|html)$", p.name))
        row["files"] = {p.name: md5(p) for p in written}
        if code != 0:
            lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
            row["error"] = (lines[-1] if lines else "no stderr").replace(tmp, "<tmp>")
    return row


def environment(qcli: list[str]) -> dict:
    """The versions that decide the bytes, from the interpreter that runs qcli, and the CPU's int8 dot product."""
    exe = Path(qcli[0])
    python = str(exe) if "python" in exe.name else exe.read_text(errors="replace").splitlines()[0].removeprefix("#!")
    code = "import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in DISTS}))"
    dists = ("qcli", "onnx", "onnxruntime", "numpy", "ml_dtypes")
    out = subprocess.run([python.strip(), "-c", code.replace("DISTS", repr(dists))], capture_output=True, text=True)
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted(set(re.findall(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", cpu)))
    return {"versions": json.loads(out.stdout or "{}"), "int8_dot": flags}


def record(qcli: list[str], models: list[str], only: set[str]) -> dict:
    rec = {"qcli": shlex.join(qcli), "env": environment(qcli), "selection": [models, sorted(only)], "inputs": {}}
    rec["results"] = {}
    start = time.perf_counter()
    for name in models:
        folder = model_dir(name)
        if not (folder / "model.onnx").exists():
            print(f"[{name}] no {folder / 'model.onnx'} (run `make bench` once): skipped", flush=True)
            continue
        data = [p for sub in ("calib", "eval") for p in sorted((folder / sub).glob("*.np[yz]"))]
        listing = "".join(f"{p.parent.name}/{p.name} {md5(p)}\n" for p in data)  # calib/ and eval/ together
        rec["inputs"][name] = {"model": md5(folder / "model.onnx"), "data": hashlib.md5(listing.encode()).hexdigest()}
        for variant, args in variants(name).items():
            if only and variant not in only:
                continue
            print(f"[{name}] {variant} ...", end=" ", flush=True)
            row = rec["results"][f"{name}/{variant}"] = run_one(qcli, folder, args)
            print(f"rc={row['returncode']} {row['seconds']:.1f} s {row.get('error', '')}", flush=True)
    rec["total_seconds"] = round(time.perf_counter() - start, 1)
    return rec


def compare(base: dict, new: dict) -> list[str]:
    """Every difference that matters: inputs, exit codes, errors and md5s (not seconds)."""
    problems = []
    if base["env"] != new["env"]:
        print(f"warning: environment differs: {base['env']} vs {new['env']}", file=sys.stderr)
    for name, digest in new["inputs"].items():
        if base["inputs"].get(name, digest) != digest:
            problems.append(f"{name}: input model or data differ from the base record's")
    models, only = new["selection"]  # what was asked for: a model skipped for want of its files is "not run"
    keys = {k for k in base["results"] if k.split("/")[0] in models and (not only or k.split("/", 1)[1] in only)}
    for key in sorted(keys | set(new["results"])):
        old, cur = base["results"].get(key), new["results"].get(key)
        if old is None or cur is None:
            problems.append(f"{key}: {'not in the base record' if old is None else 'not run'}")
            continue
        for field in ("returncode", "error", "files"):
            if old.get(field) != cur.get(field):
                problems.append(f"{key}: {field} {old.get(field)} -> {cur.get(field)}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qcli", help="qcli command, e.g. .venv/bin/qcli or '.venv/bin/python -m qcli'")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of the models")
    parser.add_argument("--variants", default="", help="comma-separated subset of the variants (default: all)")
    parser.add_argument("--json", type=Path, required=True, help="record to write (to read, without --qcli)")
    parser.add_argument("--compare", type=Path, help="base record: print mismatches, exit 1 on any")
    args = parser.parse_args()
    if args.qcli:
        models = [m for m in args.models.split(",") if m]
        qcli = shlex.split(args.qcli)
        qcli[0] = str(Path(shutil.which(qcli[0]) or qcli[0]).absolute())  # runs in a temp dir; a venv's link kept
        rec = record(qcli, models, {v for v in args.variants.split(",") if v})
        args.json.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"wrote {args.json}: {len(rec['results'])} runs in {rec['total_seconds']:.0f} s")
    else:
        rec = json.loads(args.json.read_text())
    if args.compare:
        problems = compare(json.loads(args.compare.read_text()), rec)
        print("\n".join(problems) or f"all {len(rec['results'])} runs match {args.compare}")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
