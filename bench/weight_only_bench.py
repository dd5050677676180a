"""Weight-only schemes side by side with onnxruntime's int4, every model timed in ONE process, interleaved.

    python bench/weight_only_bench.py [--models minilm,attention] [--rounds 60]

For each model: qcli w4a16 (the default --format auto; and qdq, ort forced; rtn, gptq, awq, adaround, clip search),
qcli w8a16 (auto) and onnxruntime's MatMulNBitsQuantizer (RTN, and its GPTQ and HQQ, block 32) are written by
their own processes (quantize time and peak memory measured there; a failure is a row with its error). Then
all of them and the FP32 model are loaded in this process and run round-robin on the same input (thread
spinning off, so the sessions do not steal each other's cores), at batch 1 and batch 8; the latency figures
are ratios of medians to FP32 and to onnxruntime's int4 output.
Fidelity (SQNR, cosine of the first output against FP32) over the whole eval folder at its own batch.
Writes bench/weight_only_results.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import BENCH, CACHE, load_samples, model_dir
from run_bench import PY, _cpu, error_summary, run_measured

VARIANTS = {
    "qcli w4a16 (auto)": ["--scheme", "w4a16"],
    "qcli w4a16 (auto, no data)": ["--scheme", "w4a16", "NOEVAL"],
    "qcli w4a16 --format qdq": ["--scheme", "w4a16", "--format", "qdq"],
    "qcli w4a16 --format ort": ["--scheme", "w4a16", "--format", "ort"],
    "qcli w8a16 (auto)": ["--scheme", "w8a16"],
    "qcli w4a16 gptq (auto)": ["--scheme", "w4a16", "--weight-algo", "gptq", "--calib", "CALIB"],
    "qcli w4a16 awq (auto)": ["--scheme", "w4a16", "--weight-algo", "awq", "--calib", "CALIB"],
    "qcli w4a16 clip-search (auto)": ["--scheme", "w4a16", "--clip-search", "--calib", "CALIB"],
    "qcli w4a16 adaround (auto)": ["--scheme", "w4a16", "--weight-algo", "adaround", "--calib", "CALIB"],
    "qcli w4a16 adaround asym (auto)": [
        *("--scheme", "w4a16", "--weight-algo", "adaround", "--weight-asymmetric", "--calib", "CALIB")
    ],
    "qcli w4a16 gptq act-order asym (auto)": [
        *("--scheme", "w4a16", "--weight-algo", "gptq", "--act-order", "--weight-asymmetric", "--calib", "CALIB")
    ],
    # An accuracy target, measured on the calibration file held aside (not on the eval data this table uses).
    "qcli w4a16 gptq act-order asym --min-sqnr 17 (auto)": [
        *("--scheme", "w4a16", "--weight-algo", "gptq", "--act-order", "--weight-asymmetric", "--calib", "CALIB"),
        *("--min-sqnr", "17", "NOEVAL"),
    ],
    "qcli w8a16 --min-sqnr 30 (auto)": ["--scheme", "w8a16", "--calib", "CALIB", "--min-sqnr", "30", "NOEVAL"],
}
ORT = "ORT MatMulNBits int4 RTN b32"
ORT_ALGOS = {ORT: "default", "ORT MatMulNBits int4 GPTQ b32": "gptq", "ORT MatMulNBits int4 HQQ b32": "hqq"}


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batch(feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first n rows of a feed, repeating it where it has fewer."""
    out = {}
    for k, v in feed.items():
        reps = -(-n // v.shape[0])
        out[k] = np.concatenate([v] * reps)[:n]
    return out


def _fidelity(ref: ort.InferenceSession, cand: ort.InferenceSession, feeds) -> tuple[float, float]:
    sig = noise = dot = cc = 0.0
    for f in feeds:
        r = ref.run(None, f)[0].astype(np.float64).ravel()
        c = cand.run(None, f)[0].astype(np.float64).ravel()
        sig, noise, dot, cc = sig + r @ r, noise + (r - c) @ (r - c), dot + r @ c, cc + c @ c
    return 10 * np.log10(sig / max(noise, 1e-30)), dot / np.sqrt(sig * cc)


def _timed(sessions: dict[str, ort.InferenceSession], feed, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for i in range(rounds + 3):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            sessions[name].run(None, feed)
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def quantize_all(model: str) -> tuple[list[dict], dict[str, Path]]:
    """Every variant written by its own process. Run before any session is loaded here: a child's peak
    memory counts the pages it shared with this process at fork."""
    folder = model_dir(model)
    ref_path, out_dir = folder / "model.onnx", CACHE / "out" / model / "weight-only"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, paths = [], {}
    for label, args in VARIANTS.items():
        out = out_dir / ("".join(c if c.isalnum() else "_" for c in label) + ".onnx")
        out.unlink(missing_ok=True)  # a failed run must not leave the last run's model to be measured
        args = [str(folder / "calib") if a == "CALIB" else a for a in args]
        data = [] if "NOEVAL" in args else ["--eval", str(folder / "eval")]
        args = [a for a in args if a != "NOEVAL"]
        cmd = [PY, "-m", "qcli", "quantize", str(ref_path), *args, *data, "-o", str(out)]
        rows.append({"variant": label, "quantize": run_measured(cmd, CACHE / "logs" / f"{model}-{out.stem}.log")})
        paths[label] = out
    for label, algo in ORT_ALGOS.items():
        out = out_dir / f"ort_nbits_{algo}.onnx"
        out.unlink(missing_ok=True)
        cmd = [PY, str(BENCH / "ort_baseline.py"), "nbits", str(ref_path), str(out), "--algo", algo]
        cmd += ["--calib", str(folder / "calib")] if algo == "gptq" else []
        log = CACHE / "logs" / f"{model}-ort_nbits_{algo}.log"
        rows.append({"variant": label, "quantize": run_measured(cmd, log)})
        if not out.exists():
            rows[-1]["error"] = error_summary(log.read_text(errors="replace"))
        paths[label] = out
    return rows, paths


def measure(model: str, rows: list[dict], paths: dict[str, Path], rounds: int) -> list[dict]:
    folder = model_dir(model)
    ref_path, eval_dir = folder / "model.onnx", folder / "eval"
    ok = {k: p for k, p in paths.items() if p.exists()}
    sessions = {"FP32": _session(ref_path)} | {k: _session(p) for k, p in ok.items()}
    names = [i.name for i in sessions["FP32"].get_inputs()]
    feeds = load_samples(eval_dir, names)
    for row in rows:
        label = row["variant"]
        if label not in ok:
            row.setdefault("error", "quantize failed (see bench/.cache/logs)")
            continue
        row["size_ratio"] = _size(ok[label]) / _size(ref_path)
        row["sqnr_db"], row["cosine"] = _fidelity(sessions["FP32"], sessions[label], feeds)
    for batch in (1, 8):
        medians = _timed(sessions, _batch(feeds[0], batch), rounds)
        for row in rows:
            if row["variant"] in ok:
                row[f"b{batch}_vs_fp32"] = medians[row["variant"]] / medians["FP32"]
                row[f"b{batch}_vs_ort"] = medians[row["variant"]] / medians[ORT] if ORT in ok else None
    return [{"model": model, **r} for r in rows]


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def markdown(rows: list[dict], cpu: str, rounds: int) -> str:
    lines = [
        f"Weight-only, measured on {cpu}, onnxruntime {ort.__version__}; latency: medians of {rounds} interleaved "
        "rounds in one process (spinning off), ratio to FP32 and to onnxruntime's int4 output.",
        "",
        "| model | variant | size vs FP32 | SQNR dB | cosine | b1 vs FP32 | b1 vs ORT int4 | b8 vs FP32 "
        "| b8 vs ORT int4 | quantize s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["quantize"]
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['error']} |||||||| {q['seconds']:.1f} | |")
            continue
        vs = [
            f"{r[k]:.2f}" if r.get(k) is not None else "-"
            for k in ("b1_vs_fp32", "b1_vs_ort", "b8_vs_fp32", "b8_vs_ort")
        ]
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['size_ratio']:.2f} | {r['sqnr_db']:.1f} | {r['cosine']:.4f} | "
            + " | ".join(vs)
            + f" | {q['seconds']:.1f} | {q['peak_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,attention")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    written = {}
    for m in args.models.split(","):
        if not (model_dir(m) / "model.onnx").exists():
            print(f"[weight-only] {m}: no model (run `make bench` once to fetch it)", file=sys.stderr)
            continue
        print(f"[weight-only] {m}: quantizing ...", flush=True)
        written[m] = quantize_all(m)
    rows = []
    for m, (quantized, paths) in written.items():
        print(f"[weight-only] {m}: timing ...", flush=True)
        rows += measure(m, quantized, paths, args.rounds)
    text = markdown(rows, _cpu(), args.rounds)
    (BENCH / "weight_only_results.md").write_text(text)
    (BENCH / "weight_only_results.json").write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
