"""FP32, qcli's default W8A8 output and onnxruntime's own int8 output, timed in one interleaved run.

    python bench/head_to_head.py [--models cnn,det,...] [--rounds 72] [--threads 2]

Reads what run_bench.py left under bench/.cache/out/<model>/: qcli-w8a8.onnx (`qcli quantize --calib`, all
defaults) and ort-static.onnx (onnxruntime's quantize_static, QDQ, per-channel, MinMax). Opens three
onnxruntime sessions in this one process (CPU provider, the same intra-op threads, one inter-op thread,
`session.intra_op.allow_spinning` = 0, default graph optimisations): FP32, qcli, onnxruntime. Runs each on
every eval input once (warm-up; those outputs give SQNR and top-1 against FP32 with bench/metrics.py's
output_metrics, one tool for every row), then times N rounds: each round runs the three sessions once each
on the same input, the order rotated every round, so background load hits all three alike. Ratios are
ratios of medians; "per round" is qcli/onnxruntime paired within each round (25th-75th percentile).
Writes a section of bench/results.md (head_to_head_report.py; it replaces an earlier one) and
bench/head_to_head.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import BENCH, CACHE, load_samples, model_dir
from head_to_head_report import SESSIONS, section, write_section
from metrics import output_metrics
from run_bench import _cpu

MODELS = ("cnn", "attention", "det", "rec", "cls", "dwsep", "minilm", "effnet", "yolo", "yolox", "picodet")
FILES = {"qcli": "qcli-w8a8.onnx", "ort": "ort-static.onnx"}
LAYER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict[str, ort.InferenceSession], feeds: list[dict], rounds: int) -> dict[str, list]:
    """ms per run of each session; round r runs input (r // 3) % len(feeds), order rotated by r % 3."""
    keys = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        feed = feeds[(r // len(keys)) % len(feeds)]
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            sessions[key].run(None, feed)
            times[key].append((time.perf_counter() - start) * 1000)
    return times


def accuracy(ref: list[list[np.ndarray]], cand: list[list[np.ndarray]], names: list[str]) -> dict:
    """Worst SQNR and worst top-1 agreement over the outputs, with bench/metrics.py's figures per output."""
    per = [output_metrics(n, [o[k] for o in ref], [o[k] for o in cand]) for k, n in enumerate(names)]
    top1 = [o["top1_agreement"] for o in per if o["top1_agreement"] is not None]
    return {"sqnr_db": min(o["sqnr_db"] for o in per), "top1": min(top1) if top1 else None, "outputs": per}


def qcli_plan(model_path: Path, out: Path) -> dict:
    """Layers (Conv/ConvTranspose/MatMul/Gemm) qcli made int8 or kept float, from the report beside its output."""
    report = out.with_name(out.name + ".report.json")
    if not report.exists():
        return {}
    rep = json.loads(report.read_text())
    summary = rep.get("plan", {}).get("summary", {})
    types = {n.name: n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node}

    def layers(names) -> int:
        return sum(1 for n in names or [] if types.get(n, n.split("@")[0]) in LAYER_OPS)

    placement = rep.get("placement") or {}
    return {
        "layers_int8": sum(summary.get(g, {}).get(op, 0) for g in ("int8", "int8-float-out") for op in LAYER_OPS),
        "layers_float": sum(summary.get("float", {}).get(op, 0) for op in LAYER_OPS),
        "float_for_speed": layers(rep.get("float_for_speed")),
        "float_for_accuracy": layers(rep.get("float_for_accuracy")),
        "placement": placement.get("mode"),
        "verdict": placement.get("verdict") or "",
        "summary": summary,
    }


def quantiles(values: list[float]) -> list[float]:
    q = np.percentile(values, [10, 25, 50, 75, 90])
    return [float(v) for v in q]


def bench_model(model: str, rounds: int, threads: int) -> dict:
    folder, out = model_dir(model), CACHE / "out" / model
    paths = {"fp32": folder / "model.onnx", **{k: out / f for k, f in FILES.items()}}
    missing = [str(p.relative_to(BENCH)) for p in paths.values() if not p.exists()]
    if missing or not (folder / "eval").is_dir():
        return {"model": model, "skipped": f"missing {', '.join(missing) or 'eval/'}"}
    sessions = {k: make_session(paths[k], threads) for k in SESSIONS}
    feeds = load_samples(folder / "eval", [i.name for i in sessions["fp32"].get_inputs()])
    names = [o.name for o in sessions["fp32"].get_outputs()]
    outs: dict[str, list] = {k: [] for k in SESSIONS}
    for feed in feeds:  # warm-up, and the outputs compared
        for k in SESSIONS:
            outs[k].append(sessions[k].run(names, feed))
    times = interleaved(sessions, feeds, rounds)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": model,
        "eval_files": len(feeds),
        "rounds": rounds,
        "median_ms": median,
        "p10_p90_ms": {k: [quantiles(v)[0], quantiles(v)[4]] for k, v in times.items()},
        "ratio": {
            "qcli/fp32": median["qcli"] / median["fp32"],
            "ort/fp32": median["ort"] / median["fp32"],
            "qcli/ort": median["qcli"] / median["ort"],
        },
        "per_round": {
            "qcli/ort": quantiles([q / o for q, o in zip(times["qcli"], times["ort"])]),
            "qcli/fp32": quantiles([q / f for q, f in zip(times["qcli"], times["fp32"])]),
        },
        "accuracy": {k: accuracy(outs["fp32"], outs[k], names) for k in FILES},
        "qcli_plan": qcli_plan(paths["fp32"], paths["qcli"]),
        "written": {k: time.strftime("%Y-%m-%d %H:%M", time.localtime(paths[k].stat().st_mtime)) for k in FILES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models (default: all)")
    parser.add_argument("--rounds", type=int, default=72, help="timed rounds per model (each runs all three)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every session")
    parser.add_argument("--md", type=Path, default=BENCH / "results.md", help="markdown file to put the section in")
    parser.add_argument("--json", type=Path, default=BENCH / "head_to_head.json")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    env = {
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu(),
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "load_before": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"[head to head] {model} ...", end=" ", flush=True)
        rows.append(bench_model(model, args.rounds, args.threads))
        row = rows[-1]
        print(row.get("skipped") or " ".join(f"{k} {v:.2f}" for k, v in row["ratio"].items()), flush=True)
    env["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = section(rows, env)
    write_section(args.md, lines)
    args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2, default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
