"""Silero VAD, both exports, through qcli's default W8A8: the network inside If branches (silero_vad.onnx: all of it
in the 8k/16k branches, weights in Constant nodes) and its LSTM inside If branches reading outer weights
(silero_vad_16k_op15.onnx). Calibrated from 16 kHz .wav clips through a recipe (audio frames, state fed back
step to step), then measured the way a deployment runs it: each model carrying its own state over every
evaluation clip (streamed speech), the speech probability of the int8 model against FP32's.

    python bench/silero_bench.py

Per model: size, latency (qcli's report: interleaved medians), the speech probability's SQNR and the share of
frames both models call speech or not, the quantize time; side by side with onnxruntime's quantize_dynamic (the
only onnxruntime quantizer that takes these models without hand-written calibration). Writes
bench/silero_results.json and .md."""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

from common import BENCH, CACHE
from raw_data import SILERO, download_wheel, prepare
from recipe_bench import closed_loop
from run_bench import _cpu

QCLI = [sys.executable, "-m", "qcli"]
MEMBERS = {
    "silero_vad.onnx (If at the top)": "silero_vad/data/silero_vad.onnx",
    "silero_vad_16k_op15.onnx (LSTM in If)": "silero_vad/data/silero_vad_16k_op15.onnx",
}
OUT = CACHE / "silero"


def model(member: str) -> Path:
    path = OUT / Path(member).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(download_wheel(SILERO)) as zf:
            path.write_bytes(zf.read(member))
    return path


def qcli_run(src: Path, data: dict, extra: tuple[str, ...] = ()) -> dict:
    import subprocess

    out = OUT / f"{src.stem}{'.static' if extra else ''}.int8.onnx"
    args = [*QCLI, "quantize", str(src), "--calib", str(data["calib"][100]), "--eval", str(data["eval"])]
    args += ["--recipe", str(data["recipe"]), "-o", str(out), "--no-html", *extra]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads(Path(f"{out}.report.json").read_text())
    return {"path": out, "seconds": seconds, "report": report}


def ort_dynamic(src: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    out = OUT / f"{src.stem}.ort-dyn.onnx"
    quantize_dynamic(str(src), str(out))
    return out


# the default, and --placement static: a 0.15 ms model is at the edge of what measured placement can time
TOOLS = {"qcli": (), "qcli --placement static": ("--placement", "static")}


def figures(src: Path, q: dict, data: dict) -> dict:
    r = q["report"]
    return {
        "size_ratio": q["path"].stat().st_size / src.stat().st_size,
        "latency_ratio": r["latency"]["ratio"] if r.get("latency") else None,
        "streamed": closed_loop(src, q["path"], data["eval"]),
        "quantize_seconds": q["seconds"],
        "summary": r["plan"]["summary"],
    }


def main() -> None:
    data = prepare("audio16k", (100,))
    rows = []
    for label, member in MEMBERS.items():
        src = model(member)
        runs = {tool: qcli_run(src, data, extra) for tool, extra in TOOLS.items()}
        ort_path = ort_dynamic(src)
        rows.append(
            {
                "model": label,
                "fp32_bytes": src.stat().st_size,
                **{tool: figures(src, q, data) for tool, q in runs.items()},
                "ort_dynamic": {
                    "size_ratio": ort_path.stat().st_size / src.stat().st_size,
                    "streamed": closed_loop(src, ort_path, data["eval"]),
                },
            }
        )
    cpu = _cpu()
    (BENCH / "silero_results.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")
    md = markdown(rows, cpu)
    (BENCH / "silero_results.md").write_text(md)
    print(md)


def markdown(rows: list[dict], cpu: str) -> str:
    lines = [
        f"CPU: {cpu}. Default `qcli quantize` (W8A8, measured placement) calibrated from 100 clips at 16 kHz through "
        "a recipe (audio frames of 512 samples with 64 of context, state fed back); streamed speech: each model "
        "carrying its own state over the 48 held clips.",
        "",
        "| model | tool | size vs FP32 | latency vs FP32 | speech probability SQNR "
        "| frames agreeing (speech or not) | int8 ops | quantize time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for tool in TOOLS:
            q = r[tool]
            ops = {**q["summary"].get("int8", {}), **q["summary"].get("int8-float-out", {})}
            lat = f"{q['latency_ratio']:.2f}x" if q["latency_ratio"] else "n/a"
            s = q["streamed"]
            lines.append(
                f"| {r['model'] if tool == 'qcli' else ''} | {tool} | {q['size_ratio']:.2f}x | {lat} | "
                f"{s['sqnr_db']:.1f} dB | {s['speech_agreement'] * 100:.1f} % of {s['frames']} | "
                f"{', '.join(f'{op} x{n}' for op, n in ops.items())} | {q['quantize_seconds']:.1f} s |"
            )
        o, s = r["ort_dynamic"], r["ort_dynamic"]["streamed"]
        lines.append(
            f"| | onnxruntime quantize_dynamic | {o['size_ratio']:.2f}x | | {s['sqnr_db']:.1f} dB | "
            f"{s['speech_agreement'] * 100:.1f} % | | |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
