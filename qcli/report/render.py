"""The report drawn for people: rich tables on stderr, Markdown beside the model (report.py holds the data)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qcli.io.model_io import write_text_atomic
from qcli.io.outpaths import report_paths
from qcli.report.report import Report
from qcli.schemes import handler_for


def _rows(r: Report, highlights: int = 3) -> list[tuple[str, str]]:
    """The summary's rows; `highlights`: how many of the layers adding the most error it names."""
    rows: list[tuple[str, str]] = [("warning", w) for w in r.warnings]
    rows += _plan_rows(r) + _measured_rows(r) + _decision_rows(r) + _target_rows(r)
    for x in r.layers[:highlights]:
        if x["introduced"] > 0:
            rows.append(
                (
                    "most error added",
                    f"{x['op_type']} {x['node']}: {x['sqnr_db']:.1f} dB at its output "
                    f"(+{x['introduced']:.2g} relative noise power)",
                )
            )
    rows += [("note", n) for n in r.notes]
    rows += [
        ("gate", f"{g['gate']} {'passed' if g['passed'] else 'FAILED'}: {g['value']} (limit {g['limit']})")
        for g in r.gates
    ]
    return rows


def _plan_rows(r: Report) -> list[tuple[str, str]]:
    """The scheme as applied, qcli's decisions, what the plan does, the calibration."""
    rows: list[tuple[str, str]] = []
    if r.config:
        rows.append(("scheme", handler_for(r.config["scheme"]).summary(r.config, r.decisions)))
    for name, d in r.decisions.items():
        rows.append((f"decided {name.replace('_', ' ')}", f"{d['value']} ({d['why']})"))
    if r.plan:
        for action, ops in r.plan["summary"].items():
            rows.append((f"nodes {action}", ", ".join(f"{op} x{n}" for op, n in ops.items())))
    if r.calibration:
        c = r.calibration
        rows.append(
            ("calibration", f"{calibration_method(c)}: {c['batches']} batches, {c['tensors']} tensors observed")
        )
    return rows


def _measured_rows(r: Report) -> list[tuple[str, str]]:
    """Size, latency and fidelity of the written model, and the data they were measured on."""
    rows: list[tuple[str, str]] = []
    if r.size:
        s = r.size
        rows.append(("size", f"{_mb(s['reference_bytes'])} -> {_mb(s['candidate_bytes'])} ({s['ratio']:.2f}x)"))
    if r.latency:
        lat = r.latency
        rows.append(
            (
                "latency (median)",
                f"{lat.reference_ms:.3f} ms -> {lat.candidate_ms:.3f} ms "
                f"({lat.ratio:.2f}x, {lat.runs} interleaved runs{_spread_text(lat)})",
            )
        )
    for f in r.fidelity:
        top1 = f", top-1 agreement {f.top1_agreement * 100:.1f}%" if f.top1_agreement is not None else ""
        sq = "inf" if math.isinf(f.sqnr_db) else f"{f.sqnr_db:.1f} dB"
        rows.append((f"output {f.name}", f"SQNR {sq}, cosine {f.cosine:.5f}, max abs err {f.max_abs:.4g}{top1}"))
    if r.accuracy:
        a = r.accuracy
        tops = ", ".join(
            f"top-{k} {a[f'top{k}']['reference'] * 100:.1f}% -> {a[f'top{k}']['candidate'] * 100:.1f}% "
            f"(drop {a[f'top{k}']['drop_pct']:.1f} pt)"
            for k in (1, 5)
        )
        rows.append((f"accuracy vs labels ({a['samples']} samples)", tops))
    if r.fidelity_data:
        rows.append(("fidelity data", r.fidelity_data))
    if r.recipe:
        rows.append(("data recipe", r.recipe["origin"] + recipe_notes(r.recipe)))
    return rows


def recipe_notes(recipe: dict) -> str:
    """What reading the raw files changed: ", 3 samples truncated, 2 files resampled, 1 file skipped"."""
    counts = [
        (recipe.get("truncated_samples", 0), "sample", "truncated"),
        (recipe.get("resampled_files", 0), "file", "resampled"),
        (len(recipe.get("skipped_files", ())), "file", "skipped"),
    ]
    return "".join(f", {n} {what}{'s' * (n != 1)} {done}" for n, what, done in counts if n)


def calibration_method(c: dict) -> str:
    """The calibration method, and for `auto` what the search chose (or why it did not run)."""
    search = c.get("search")
    if not search:
        return c["method"]
    if "skipped" in search:
        return f"{c['method']} (minmax: {search['skipped']})"
    changed = f", {len(search['changed'])} tensor(s) otherwise" if search.get("changed") else ""
    return f"{c['method']} ({search['base']} chosen at the outputs{changed})"


def _decision_rows(r: Report) -> list[tuple[str, str]]:
    """What stayed float and why: for speed, for accuracy (the guard), by measured placement."""
    rows: list[tuple[str, str]] = []
    for label, names in (
        ("kept float for speed", r.float_for_speed),
        ("kept float for accuracy", r.float_for_accuracy),
    ):
        if names:
            more = f" (+{len(names) - 12} more)" if len(names) > 12 else ""
            rows.append((label, ", ".join(names[:12]) + more))
    if r.guard and r.guard["kept_float"]:
        g = r.guard
        rows.append(
            (
                "accuracy guard",
                f"worst output {g['all_int8_worst_sqnr_db']:.1f} dB all-int8 -> {g['worst_sqnr_db']:.1f} dB with "
                f"{len(g['kept_float'])} node(s) float (each causes >= {g['share']:.0%} of the output noise)",
            )
        )
    if r.placement and r.placement["timed"]:
        p = r.placement
        tried = "; ".join(f"{t['group']} to {t['to']}: {t['ratio']:.2f}x{_kept(t)}" for t in p["timed"])
        rows.append(("measured placement", f"timed on this CPU (time after the move / before): {tried}"))
    if r.verified:
        v = r.verified
        decided, refit = v["decided"], v["refit"]
        rows.append(
            (
                "verified on held files",
                f"each file's worst output, averaged: {decided['mean_file_worst_sqnr_db']:.1f} dB with the decided "
                f"ranges, {refit['mean_file_worst_sqnr_db']:.1f} dB with every file's (pooled: "
                f"{decided['worst_sqnr_db']:.1f} and {refit['worst_sqnr_db']:.1f} dB): wrote the "
                f"{'refitted' if v['written'] == 'refit' else 'decided'} model",
            )
        )
    return rows


def _target_rows(r: Report) -> list[tuple[str, str]]:
    """The accuracy target's search: met or not, with how many nodes, at what cost."""
    rows: list[tuple[str, str]] = []
    t = r.target
    if not t:
        return []
    goal = " and ".join(
        g
        for g in (
            f"SQNR >= {t['min_sqnr']:g} dB" if t["min_sqnr"] is not None else "",
            f"top-1 drop <= {t['max_top1_drop']:g}%" if t["max_top1_drop"] is not None else "",
        )
        if g
    )
    raised = "raised_to_8_bits" in t
    back = t["raised_to_8_bits"] if raised else t["returned_to_float"]
    where = "at 8-bit blocks" if raised else "back to float"
    verdict = "met" if t["met"] else f"NOT met ({t['shortfall']})"
    cost = ""
    if back and t["all_int8_latency_ratio"] is not None and r.latency and r.size:
        cost = (
            f"; all-int8 would be {t['all_int8_latency_ratio']:.2f}x FP32 latency, "
            f"{_mb(t['all_int8_size_bytes'])} (this model {r.latency.ratio:.2f}x, {_mb(r.size['candidate_bytes'])})"
        )
    elif back and raised and r.size:
        cost = f"; all-4-bit would be {_mb(t['all_int8_size_bytes'])} (this model {_mb(r.size['candidate_bytes'])})"
    form = f"; measured as {t['measured_as']}" if t.get("measured_as") else ""
    rows.append(("accuracy target", f"{goal}: {verdict} with {len(back)} node(s) {where}{cost}{form}"))
    if back:
        more = f" (+{len(back) - 12} more)" if len(back) > 12 else ""
        rows.append((f"{where} for the target", ", ".join(back[:12]) + more))
    return rows


def _spread_text(lat) -> str:
    if not lat.reference_p10_p90 or not lat.candidate_p10_p90:
        return ""
    (a, b), (c, d) = lat.reference_p10_p90, lat.candidate_p10_p90
    return f"; p10-p90 {a:.3f}-{b:.3f} -> {c:.3f}-{d:.3f} ms"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_rich(r: Report, console: Console, highlights: int = 3) -> None:
    """A table on a terminal; plain `key: value` lines, never cut or wrapped, anywhere else (CI logs)."""
    title = f"qcli {r.kind}: {Path(r.candidate).name}"
    if not console.is_terminal:
        console.file.write("\n".join([title] + [f"{k}: {v}" for k, v in _rows(r, highlights)]) + "\n")
        return
    t = Table(title=escape(title), show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in _rows(r, highlights):
        t.add_row(escape(k), escape(v))
    console.print(t)


def render_layers(r: Report, console: Console, top: int) -> None:
    """The per-layer ranking, largest introduced error first: a table on a terminal, plain lines elsewhere."""
    head = ("rank", "introduced", "SQNR dB", "op", "node", "tensor")
    rows = [
        (str(i), f"{x['introduced']:.3g}", f"{x['sqnr_db']:.1f}", x["op_type"], x["node"], x["tensor"])
        for i, x in enumerate(r.layers[:top], 1)
    ]
    title = f"per-layer error: top {len(rows)} of {len(r.layers)} compute layers (all in --json)"
    if not console.is_terminal:
        console.file.write("\n".join([title, "\t".join(head)] + ["\t".join(row) for row in rows]) + "\n")
        return
    t = Table(title=escape(title), title_justify="left")
    for h in head:
        t.add_column(h, justify="right" if h in ("rank", "introduced", "SQNR dB") else "left")
    for row in rows:
        t.add_row(*map(escape, row))
    console.print(t)


def render_markdown(r: Report) -> str:
    lines = [
        f"# qcli {r.kind} report",
        "",
        f"- reference: `{r.reference}`",
        f"- candidate: `{r.candidate}`",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in _rows(r)]
    if r.plan:
        reasons: dict[str, list[str]] = {}
        for n in r.plan["nodes"]:
            if n["action"] == "float" and n["reason"]:
                reasons.setdefault(n["reason"]["text"], []).append(n["node"])
        if reasons:
            lines += ["", "## Compute nodes left float", ""]
            lines += [f"- {why}: {', '.join(f'`{n}`' for n in nodes)}" for why, nodes in reasons.items()]
    if r.layers:
        lines += [
            "",
            "## Per-layer error (largest introduced first)",
            "",
            "| tensor | node | op | SQNR dB | added noise |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| `{x['tensor']}` | `{x['node']}` | {x['op_type']} | {x['sqnr_db']:.1f} | {x['introduced']:.2g} |"
            for x in r.layers[:30]
        ]
    if r.plan:
        lines += _markdown_plan(r)
    if r.provenance:
        p = r.provenance
        lines += ["", "## Provenance", ""]
        lines += [f"- versions: {', '.join(f'{k} {v}' for k, v in p['versions'].items())}"]
        lines += [f"- CPU: {p['cpu'].get('text', p['cpu'])}", f"- command: `{p['command'] or '(API call)'}`"]
        lines += [f"- {k} data: {d['files']} file(s), sha256 `{d['sha256']}`" for k, d in p["data"].items()]
    lines += ["", "## Glossary", ""] + [f"- **{k}**: {v}" for k, v in GLOSSARY]
    return "\n".join(lines) + "\n"


GLOSSARY = [
    (
        "SQNR",
        "signal-to-quantization-noise ratio of an output against the FP32 model, in dB (higher is closer; "
        "20 dB: noise power 1% of the signal's)",
    ),
    (
        "added noise",
        "per layer: relative noise power at its output minus the largest at its inputs, so noise "
        "inherited from upstream is not blamed on it",
    ),
    ("int8", "runs as an integer kernel (QLinearConv, QGemm, QLinearMatMul, QLinearAdd, ...)"),
    ("int8-float-out", "MatMul/Gemm on int8 inputs that writes float directly (MatMulIntegerToFloat, QGemm)"),
    ("int8-passthrough", "moves int8 data without converting it (Reshape, MaxPool, Concat, ...)"),
    ("folded-into-q", "Relu/Clip or a scalar Mul/Div/Add removed: the following QuantizeLinear does its work"),
    ("int4-weight", "weight stored as int4 blocks, compute in float"),
    ("latency ratio", "median candidate latency / median FP32 latency over interleaved runs on the same input"),
]


def _markdown_plan(r: Report) -> list[str]:
    lines = ["", "## Plan: every node", "", "| node | op | action | reason |", "|---|---|---|---|"]
    lines += [
        f"| `{n['node']}` | {n['op_type']} | {n['action']} | {(n['reason'] or {}).get('text', '').replace('|', '/')} |"
        for n in r.plan["nodes"]
    ]
    acts = r.plan.get("activations") or {}
    if acts:
        lines += [
            "",
            "## Activation ranges",
            "",
            "| tensor | method | range | scale | zero point |",
            "|---|---|---|---|---|",
        ]
        for t, a in acts.items():
            rng = f"{a['range'][0]:.4g} .. {a['range'][1]:.4g}" if a.get("range") else f"shares {a.get('share')}"
            lines.append(f"| `{t}` | {a.get('method') or '-'} | {rng} | {a['scale']:.4g} | {a['zero_point']} |")
    return lines


def write_beside(r: Report, out: Path, html: bool = True) -> tuple[Path, ...]:
    """OUT.report.json, OUT.report.md and (html) OUT.report.html."""
    from qcli.report.html import write_html

    j, md, _ = report_paths(out)
    write_text_atomic(j, r.to_json())
    write_text_atomic(md, render_markdown(r))
    return (j, md, write_html(r.to_dict(), Path(str(out) + ".report.html"))) if html else (j, md)


def _kept(timed: dict) -> str:
    if timed["kept"]:
        return f" (kept {timed['to']})"
    if "worst_sqnr_db" in timed:  # faster, but the accuracy check refused it
        before, after = timed["worst_sqnr_db"]
        return f" (not kept: worst output {before:.1f} -> {after:.1f} dB)"
    return ""
