"""Accuracy, size and latency of a quantized model against its FP32 reference.

    python bench/metrics.py REF.onnx CAND.onnx --data EVAL_DIR --json

Prints the same JSON shape as `qcli compare --json`, so run_bench.py can use either:
  size:    file sizes in bytes and candidate/reference ratio
  latency: median ms per run; both sessions live in one process (2 intra-op threads, no
           spinning) and run interleaved on the same inputs, >= 20 timed runs each after warm-up
  outputs: per model output, over all eval samples concatenated:
           sqnr_db = 10*log10(sum(ref^2) / sum((ref-cand)^2)), cosine similarity, max |ref-cand|,
           top1_agreement = share of rows with the same argmax over the last axis for outputs
           shaped like class scores ([N, C] or [N, T, C], as qcli compare does), else null
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import load_samples

WARMUP = 3


def make_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # hide warnings about unused initializers in exported models
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def output_metrics(name: str, ref: list[np.ndarray], cand: list[np.ndarray]) -> dict:
    r = np.concatenate([a.astype(np.float64).ravel() for a in ref])
    c = np.concatenate([a.astype(np.float64).ravel() for a in cand])
    noise = float(np.sum((r - c) ** 2))
    signal = float(np.sum(r**2))
    sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    denom = float(np.linalg.norm(r) * np.linalg.norm(c))
    top1 = None
    if ref[0].ndim in (2, 3) and ref[0].shape[-1] >= 2:  # class scores [N, C] or per step [N, T, C]
        agree = [(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)).ravel() for a, b in zip(ref, cand)]
        top1 = float(np.concatenate(agree).mean())
    return {
        "name": name,
        "sqnr_db": sqnr,
        "cosine": float(r @ c) / denom if denom else 0.0,
        "max_abs": float(np.max(np.abs(r - c))),
        "top1_agreement": top1,
    }


def latency(ref: ort.InferenceSession, cand: ort.InferenceSession, feeds: list[dict], runs: int) -> dict:
    for feed in feeds[:WARMUP]:
        ref.run(None, feed)
        cand.run(None, feed)
    times: dict[str, list[float]] = {"ref": [], "cand": []}
    for i in range(max(runs, len(feeds))):
        feed = feeds[i % len(feeds)]
        for key, session in (("ref", ref), ("cand", cand)):
            start = time.perf_counter()
            session.run(None, feed)
            times[key].append((time.perf_counter() - start) * 1000)
    ref_ms, cand_ms = statistics.median(times["ref"]), statistics.median(times["cand"])
    return {"reference_ms": ref_ms, "candidate_ms": cand_ms, "ratio": cand_ms / ref_ms}


def compare(ref_path: Path, cand_path: Path, data_dir: Path, runs: int = 20) -> dict:
    ref, cand = make_session(ref_path), make_session(cand_path)
    feeds = load_samples(data_dir, [i.name for i in ref.get_inputs()])
    names = [o.name for o in ref.get_outputs()]
    ref_out = [ref.run(names, feed) for feed in feeds]
    cand_out = [cand.run(names, feed) for feed in feeds]
    ref_bytes, cand_bytes = ref_path.stat().st_size, cand_path.stat().st_size
    return {
        "size": {"reference_bytes": ref_bytes, "candidate_bytes": cand_bytes, "ratio": cand_bytes / ref_bytes},
        "latency": latency(ref, cand, feeds, runs),
        "outputs": [
            output_metrics(name, [o[k] for o in ref_out], [o[k] for o in cand_out]) for k, name in enumerate(names)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    args = parser.parse_args()
    print(json.dumps(compare(args.reference, args.candidate, args.data, args.runs), indent=2))


if __name__ == "__main__":
    main()
