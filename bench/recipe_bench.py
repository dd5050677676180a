"""qcli from the files people have: an image classifier from a folder of JPEGs, MiniLM from a text file with its
own tokenizer.json (no recipe), and Silero VAD (stateful) from .wav recordings, each calibrated from the raw
files through a recipe and from reference arrays made from the same files by other code (raw_data.py).

    python bench/recipe_bench.py [--kinds image,text,audio] [--sizes 100,1000]

Per kind: fidelity on the held set (raw vs arrays: the same within the preprocessing's noise), whether the
plans agree (every node's action, every activation range), and the wall time and peak RSS (os.wait4) of
`qcli quantize` from 100 and 1,000 raw files. Every run uses --placement static, so timing noise cannot change a
plan. For Silero VAD the speech probability is also compared with each model carrying its own state over every
evaluation clip (the closed loop a deployment runs). Writes bench/recipe_results.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import BENCH, CACHE
from memory_bench import peak_rss
from raw_data import EVAL_FILES, audio_frames, prepare, vad_steps
from run_bench import _cpu

QCLI = [sys.executable, "-m", "qcli"]
OUT = CACHE / "recipes" / "out"
MODELS = {"image": "EfficientNet-Lite0-style", "text": "MiniLM-L6 (no recipe)", "audio": "Silero VAD 16k op15"}
MODELS["audio16k"] = "Silero VAD 16k op15"
SIZES = {"audio16k": (100,)}  # framing and state without resampling: one size is enough


def quantize(model: Path, calib: Path, held: Path, recipe: Path | None, out: Path) -> dict:
    args = [*QCLI, "quantize", str(model), "--calib", str(calib), "--eval", str(held), "-o", str(out)]
    args += ["--placement", "static"] + (["--recipe", str(recipe)] if recipe else [])
    rc, rss, seconds, err = peak_rss(args, None, BENCH.parent)
    if rc != 0:
        raise SystemExit(f"{' '.join(args)} exited {rc}: {err}")
    report = json.loads(Path(f"{out}.report.json").read_text())
    return {"report": report, "seconds": seconds, "peak_mb": rss / 2**20}


def plan_difference(a: dict, b: dict) -> dict:
    """Nodes whose action differs; the largest difference of an activation's range ends, relative to its width."""
    na = {n["node"]: n["action"] for n in a["plan"]["nodes"]}
    nb = {n["node"]: n["action"] for n in b["plan"]["nodes"]}
    ra, rb = a["plan"]["activations"], b["plan"]["activations"]
    worst = 0.0
    for name in ra.keys() & rb.keys():
        if ra[name]["range"] is None or rb[name]["range"] is None:  # a range shared with another tensor's
            sa, sb = ra[name]["scale"], rb[name]["scale"]
            worst = max(worst, abs(sa - sb) / max(sa, 1e-30))
            continue
        (lo, hi), (lo2, hi2) = ra[name]["range"], rb[name]["range"]
        worst = max(worst, max(abs(lo - lo2), abs(hi - hi2)) / max(hi - lo, 1e-12))
    return {
        "nodes": len(na),
        "actions_differ": sum(na[k] != nb.get(k) for k in na),
        "activations": len(ra),
        "only_one_side": len(ra.keys() ^ rb.keys()),
        "largest_range_difference": worst,
    }


def closed_loop(fp32: Path, int8: Path, clips: Path) -> dict:
    """Each model carrying its own state over each clip: the speech probabilities side by side."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref, cand = (ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in (fp32, int8))
    pr, pc = [], []
    for f in sorted(clips.glob("*.wav")):
        frames = audio_frames(f)
        pr += vad_steps(ref, frames)[1]
        pc += vad_steps(cand, frames)[1]
    pr, pc = np.array(pr), np.array(pc)
    noise = float(np.mean((pr - pc) ** 2))
    return {
        "frames": len(pr),
        "sqnr_db": float(10 * np.log10(np.mean(pr**2) / noise)) if noise else float("inf"),
        "max_abs_diff": float(np.max(np.abs(pr - pc))),
        "speech_agreement": float(np.mean((pr > 0.5) == (pc > 0.5))),
        "speech_frames_fp32": int(np.sum(pr > 0.5)),
    }


def run_kind(kind: str, sizes: tuple[int, ...]) -> dict:
    sizes = SIZES.get(kind, sizes)
    p = prepare(kind, sizes)
    out = OUT / kind
    out.mkdir(parents=True, exist_ok=True)
    small = min(sizes)
    raw = {n: quantize(p["model"], p["calib"][n], p["eval"], p["recipe"], out / f"raw-{n}.onnx") for n in sizes}
    ref = quantize(p["model"], p["reference"]["calib"], p["reference"]["eval"], None, out / "arrays.onnx")
    row = {
        "kind": kind,
        "model": MODELS[kind],
        "fidelity": {
            o["name"]: {"raw_db": o["sqnr_db"], "arrays_db": r["sqnr_db"]}
            for o, r in zip(raw[small]["report"]["outputs"], ref["report"]["outputs"])
        },
        "plan": plan_difference(raw[small]["report"], ref["report"]),
        "runs": {str(n): {"seconds": r["seconds"], "peak_mb": r["peak_mb"]} for n, r in raw.items()},
        "samples": {str(n): r["report"]["calibration"]["batches"] for n, r in raw.items()},
        "recipe": raw[small]["report"]["recipe"],
    }
    if kind.startswith("audio"):
        row["closed_loop"] = closed_loop(p["model"], out / f"raw-{small}.onnx", p["eval"])
    return row


def markdown(rows: list[dict], cpu: str, sizes: tuple[int, ...]) -> str:
    a, b = min(sizes), max(sizes)
    lines = [
        f"CPU: {cpu}. `qcli quantize --placement static`, default W8A8, "
        f"--eval on {EVAL_FILES} held files of each kind.",
        "",
        f"| kind | model | fidelity from raw files ({a}) | from reference arrays | plan: differs by "
        f"| time {a} / {b} files | peak RSS {a} / {b} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fid = r["fidelity"]
        raw = ", ".join(f"{k} {v['raw_db']:.2f} dB" for k, v in fid.items())
        arr = ", ".join(f"{v['arrays_db']:.2f} dB" for v in fid.values())
        pd = r["plan"]
        plan = f"{pd['actions_differ']}/{pd['nodes']} nodes; ranges up to {pd['largest_range_difference'] * 100:.2g} %"
        runs = [(r["runs"][k], r["samples"][k]) for k in (str(a), str(b)) if k in r["runs"]]
        time = " / ".join(f"{run['seconds']:.1f} s" for run, _ in runs)
        time += f" ({' / '.join(str(n) for _, n in runs)} samples)" if r["kind"].startswith("audio") else ""
        rss = " / ".join(f"{run['peak_mb']:.0f} MB" for run, _ in runs)
        lines.append(f"| {r['kind']} | {r['model']} | {raw} | {arr} | {plan} | {time} | {rss} |")
    for r in rows:
        if "closed_loop" in r:
            c = r["closed_loop"]
            lines += [
                "",
                f"Silero VAD ({r['kind']}), each model carrying its own state over the {c['frames']} frames of the "
                "held clips: "
                f"speech probability SQNR {c['sqnr_db']:.1f} dB, largest difference {c['max_abs_diff']:.3f}, "
                f"speech/non-speech (0.5) agreement {c['speech_agreement'] * 100:.1f} % "
                f"({c['speech_frames_fp32']} speech frames by FP32).",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", default=",".join(MODELS))
    ap.add_argument("--sizes", default="100,1000")
    args = ap.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    kinds, cpu = args.kinds.split(","), _cpu()
    old = BENCH / "recipe_results.json"
    rows = json.loads(old.read_text())["rows"] if old.is_file() else []
    rows = [r for r in rows if r["kind"] not in kinds and r.get("cpu") == cpu]  # other kinds' rows, same CPU
    for kind in kinds:
        print(f"recipe bench: {kind}", file=sys.stderr)
        rows.append(run_kind(kind, sizes) | {"cpu": cpu})
    rows.sort(key=lambda r: list(MODELS).index(r["kind"]))
    (BENCH / "recipe_results.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, cpu, sizes)
    (BENCH / "recipe_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
