"""Render benchmark rows (see run_bench.py) as bench/results.md and bench/results.json."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import onnxruntime as ort
from common import MINILM, PPOCR_MEMBERS, RAPIDOCR, ROOT, SAMPLE_MODELS, model_dir

COLUMNS = [
    "model",
    "tool / variant",
    "quantize time s",
    "peak MB",
    "size ratio",
    "latency ratio (quant/FP32)",
    "SQNR dB",
    "top-1 agreement",
    "valid",
    "notes",
]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(value, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def _accuracy(outputs: list[dict]) -> tuple[str, str]:
    """Worst SQNR and worst top-1 agreement over a model's outputs."""
    sqnr = _fmt(min(o["sqnr_db"] for o in outputs), ".1f")
    if len(outputs) > 1:
        sqnr += f" (min of {len(outputs)})"
    top1 = [o["top1_agreement"] for o in outputs if o.get("top1_agreement") is not None]
    return sqnr, _fmt(min(top1) * 100, ".1f") + " %" if top1 else "n/a"


def result_line(row: dict) -> list[str]:
    quant = row.get("quantize", {})
    time_s = _fmt(quant.get("seconds"), ".1f") if quant else "-"
    peak = _fmt(quant.get("peak_mb"), ".0f") if quant else "-"
    compare = row.get("compare")
    size = latency = sqnr = top1 = "-"
    if compare:
        size = _fmt(compare["size"]["ratio"], ".3f")
        latency = _fmt(compare["latency"]["ratio"], ".2f")
        sqnr, top1 = _accuracy(compare["outputs"])
    valid = {True: "yes", False: "no", None: "-"}[row.get("valid")]
    notes = "; ".join(n for n in (row.get("error"), row.get("validation_error")) if n)
    cells = [row["model"], row["variant"], time_s, peak, size, latency, sqnr, top1, valid, notes]
    return [_cell(c) for c in cells]


def model_source(model: str) -> str:
    if model in SAMPLE_MODELS:
        return f"sample_models/{model}/model.onnx"
    if model in PPOCR_MEMBERS:
        return f"{RAPIDOCR}: {PPOCR_MEMBERS[model]}"
    if model == "dwsep":
        return "depthwise-separable convnet with per-channel outliers, made by bench/make_dwsep.py"
    if model == "effnet":
        return "EfficientNet-Lite0-shaped convnet as TF exports it (Pad, Clip 0-6), made by bench/make_effnet.py"
    if model == "yolo":
        return "YOLOv8n-shaped SiLU detector as Ultralytics exports it, made by bench/make_yolo.py"
    if model == "yolox":
        return "YOLOX-style detector (Focus, CSPDarknet, PAFPN, decoupled head), bench/make_yolox.py, photos"
    if model == "picodet":
        return "PicoDet-style layout detector (LCNet, HardSwish, wide folded BN gains), bench/make_picodet.py, photos"
    return f"{MINILM} weights, exported by bench/export_minilm.py"


def model_line(model: str) -> list[str] | None:
    folder = model_dir(model)
    path = folder / "model.onnx"
    if not path.exists():
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = ", ".join(f"{i.name} {i.type} {i.shape}" for i in session.get_inputs())
    outputs = ", ".join(f"{o.name} {o.shape}" for o in session.get_outputs())
    counts = [
        str(sum(1 for p in (folder / split).glob("*.np[yz]"))) if (folder / split).is_dir() else "missing"
        for split in ("calib", "eval")
    ]
    size = f"{path.stat().st_size / 2**20:.1f}"
    return [_cell(c) for c in (model, model_source(model), inputs, outputs, size, *counts)]


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(line) + " |" for line in lines),
    ]


def _calib_cell(row: dict | None) -> tuple[str, str]:
    if row is None:
        return "-", "-"
    if "error" in row:
        return _cell(row["error"]), f"{row['peak_mb']:.0f}"
    return f"{row['seconds']:.1f}", f"{row['peak_mb']:.0f}"


def calib_lines(calib_rows: list[dict]) -> list[list[str]]:
    """One line per model and method: time and peak memory at each sample count, qcli then onnxruntime."""
    by = {(r["model"], r["tool"], r["method"], r["samples"]): r for r in calib_rows}
    sizes = sorted({r["samples"] for r in calib_rows})
    lines = []
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in calib_rows):
        cells = [model, method]
        for tool in ("qcli", "onnxruntime"):
            for n in sizes:
                cells += _calib_cell(by.get((model, tool, method, n)))
        lines.append(cells)
    return lines


def calib_header(calib_rows: list[dict]) -> list[str]:
    sizes = sorted({r["samples"] for r in calib_rows})
    return ["model", "method"] + [
        f"{tool} {what} n={n}" for tool in ("qcli", "ORT") for n in sizes for what in ("s", "peak MB")
    ]


def write_reports(
    rows: list[dict], models: list[str], env: dict, md_path: Path, json_path: Path, calib_rows: list[dict] = ()
) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M")
    calib_rows = list(calib_rows)
    text = json.dumps({"generated": stamp, "environment": env, "rows": rows, "calibration": calib_rows}, indent=2)
    text += "\n"
    # Machine-independent paths: relative to the repository root, "python" for the interpreter.
    text = text.replace(json.dumps(sys.executable)[1:-1], "python").replace(json.dumps(str(ROOT))[1:-1] + "/", "")
    json_path.write_text(text)
    env_text = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("total_seconds", "quick"))
    md = [
        "# qcli vs onnxruntime.quantization",
        "",
        f"Generated {stamp} by `python bench/run_bench.py{' --quick' if env['quick'] else ''}` "
        f"in {env['total_seconds']:.0f} s. Environment: {env_text}.",
        "Every quantization ran in its own process; accuracy and latency are measured against the FP32 "
        "model on the eval inputs, with the same tool for every row. See bench/README.md for the columns.",
        "",
        *_table(COLUMNS, [result_line(r) for r in rows]),
        "",
        *(
            [
                "## Calibration alone: seconds and peak memory (MB) per method and sample count",
                "",
                "bench/calib_bench.py: each cell its own process; the same samples for both tools.",
                "",
                *_table(calib_header(calib_rows), calib_lines(calib_rows)),
                "",
            ]
            if calib_rows
            else []
        ),
        "## Models",
        "",
        *_table(
            ["model", "source", "inputs", "outputs", "FP32 MB", "calib files", "eval files"],
            [line for line in map(model_line, models) if line],
        ),
        "",
    ]
    md_path.write_text("\n".join(md))
