"""Render head_to_head.py's rows as a section of bench/results.md: the table, the flags, the geometric means."""

from __future__ import annotations

import math
from pathlib import Path

SECTION = "## Head to head: FP32, qcli, onnxruntime in one interleaved run"
SESSIONS = ("fp32", "qcli", "ort")
CANDIDATES = ("qcli", "ort")
UNUSABLE_DB = 10.0  # an output below this SQNR is flagged as unusable


def flags(row: dict) -> list[str]:
    """What a reader must not miss: unusable accuracy, qcli slower (in at least 3 of 4 rounds), less accurate."""
    acc, notes = row["accuracy"], []
    for key, who in (("ort", "onnxruntime"), ("qcli", "qcli")):
        if acc[key]["sqnr_db"] < UNUSABLE_DB:
            notes.append(f"{who}'s output unusable ({acc[key]['sqnr_db']:.1f} dB)")
    if row["per_round"]["qcli/fp32"][1] > 1:
        notes.append("qcli slower than FP32")
    if row["per_round"]["qcli/ort"][1] > 1:
        notes.append("qcli slower than onnxruntime")
    if acc["qcli"]["sqnr_db"] < acc["ort"]["sqnr_db"] - 0.5:
        notes.append("qcli's SQNR below onnxruntime's")
    t_q, t_o = acc["qcli"]["top1"], acc["ort"]["top1"]
    if t_q is not None and t_o is not None and t_q < t_o:
        notes.append("qcli's top-1 below onnxruntime's")
    if row["qcli_plan"].get("verdict"):
        notes.append(f"qcli: {row['qcli_plan']['verdict']}")
    return notes


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _top1(value) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def table_line(row: dict) -> str:
    ms, ratio, acc, plan = row["median_ms"], row["ratio"], row["accuracy"], row["qcli_plan"]
    spread = row["per_round"]["qcli/ort"]
    layers = f"{plan['layers_int8']} : {plan['layers_float']}" if plan else "n/a"
    if plan and plan["layers_float"]:
        layers += f" ({plan['float_for_speed']} speed, {plan['float_for_accuracy']} accuracy)"
    cells = [
        row["model"],
        *(f"{ms[k]:.2f}" for k in SESSIONS),
        *(f"{ratio[k]:.2f}" for k in ("qcli/fp32", "ort/fp32", "qcli/ort")),
        f"{spread[1]:.2f}-{spread[3]:.2f}",
        f"{acc['qcli']['sqnr_db']:.1f}",
        f"{acc['ort']['sqnr_db']:.1f}",
        f"{_top1(acc['qcli']['top1'])} / {_top1(acc['ort']['top1'])}",
        layers,
        "; ".join(flags(row)).replace("|", "\\|"),
    ]
    return "| " + " | ".join(cells) + " |"


def section(rows: list[dict], env: dict) -> list[str]:
    done = [r for r in rows if "skipped" not in r]
    usable = [r for r in done if min(r["accuracy"][k]["sqnr_db"] for k in CANDIDATES) >= UNUSABLE_DB]
    header = ["model", "FP32 ms", "qcli ms", "ORT ms", "qcli/FP32", "ORT/FP32", "qcli/ORT", "qcli/ORT per round"]
    header += ["SQNR dB qcli", "SQNR dB ORT", "top-1 qcli / ORT", "qcli layers int8 : float", "flags"]
    lines = [
        SECTION,
        "",
        f"`python bench/head_to_head.py`, {env['generated']}. CPU: {env['cpu']}; onnxruntime {env['onnxruntime']}; "
        f"{env['threads']} intra-op threads for every session, no spinning; {env['rounds']} rounds per model after "
        f"a warm-up pass over the eval inputs. Load average before / after: {env['load_before']} / "
        f"{env['load_after']}. qcli: `qcli quantize MODEL --calib CALIB` (defaults); ORT: `quantize_static` QDQ "
        "per-channel MinMax (run_bench.py's rows). Ms are medians; ratios are ratios of medians; "
        '"per round" is qcli/ORT paired within a round, 25th-75th percentile. SQNR (worst output) and top-1 vs '
        "FP32 with bench/metrics.py on all eval files. qcli layers: Conv/ConvTranspose/MatMul/Gemm int8 : float "
        '(float ones kept for speed / accuracy) from qcli\'s report. A flag "slower" means slower in at least 3 '
        "of 4 rounds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *(table_line(r) for r in done),
        "",
    ]
    for label, subset in ((f"all {len(done)} W8A8 models", done), (f"the {len(usable)} usable ones", usable)):
        if subset:
            g = {k: geomean([r["ratio"][k] for r in subset]) for k in ("qcli/ort", "qcli/fp32", "ort/fp32")}
            lines.append(
                f"Geometric mean over {label} ({', '.join(r['model'] for r in subset)}): qcli/ORT "
                f"**{g['qcli/ort']:.2f}**, qcli/FP32 **{g['qcli/fp32']:.2f}**, ORT/FP32 {g['ort/fp32']:.2f}.  "
            )
    if len(usable) < len(done):
        lines.append(f'"Usable" leaves out models where either output has an SQNR under {UNUSABLE_DB:.0f} dB.  ')
    lines += [f"Skipped {r['model']}: {r['skipped']}.  " for r in rows if "skipped" in r]
    return lines + [""]


def write_section(md_path: Path, lines: list[str]) -> None:
    """Replace the section in md_path (up to the next '## ' heading), or put it before '## Models', or append."""
    old = md_path.read_text().splitlines() if md_path.exists() else []
    if SECTION in old:
        start = old.index(SECTION)
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        old[start:end] = lines
    elif "## Models" in old:
        at = old.index("## Models")
        old[at:at] = lines
    else:
        old += ["", *lines] if old else lines
    md_path.write_text("\n".join(old).rstrip("\n") + "\n")
