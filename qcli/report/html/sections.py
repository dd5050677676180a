"""The HTML report's sections, each from the report's JSON (a dict, so `qcli report` redraws a saved report):
key figures as page text formatted as on the terminal ("40.5 dB", "0.39x"), pictures where a person would
rather look than read, the exact numbers in a table or on hover. A section with no data is left out."""

from __future__ import annotations

import math
from html import escape

from qcli.report.html import svg

INT8 = ("int8", "int8-float-out", "int8-passthrough", "folded-into-q", "dynamic", "weight-only")


def db(v: float | None) -> str:
    return "n/a" if v is None else "inf" if math.isinf(v) else f"{v:.1f} dB"


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _section(key: str, title: str, body: str, note: str = "") -> str:
    lead = f'<p class="lead">{note}</p>' if note else ""
    return f'<section id="{key}"><h2>{escape(title)}</h2>{lead}{body}</section>'


def summary(doc: dict) -> str:
    cards = []
    if doc.get("size"):
        s = doc["size"]
        cards.append(("size", f"{mb(s['reference_bytes'])} → {mb(s['candidate_bytes'])}", f"{s['ratio']:.2f}x"))
    if doc.get("latency"):
        lat = doc["latency"]
        cards.append(
            ("latency (median)", f"{lat['reference_ms']:.3f} ms → {lat['candidate_ms']:.3f} ms", f"{lat['ratio']:.2f}x")
        )
    for o in doc.get("outputs", []):
        top1 = f", top-1 agreement {o['top1_agreement'] * 100:.1f}%" if o.get("top1_agreement") is not None else ""
        cards.append((f"output {o['name']}", db(o["sqnr_db"]), f"cosine {o['cosine']:.5f}{top1}"))
    if doc.get("accuracy"):
        a = doc["accuracy"]["top1"]
        cards.append(
            (
                "top-1 vs labels",
                f"{a['reference'] * 100:.1f}% → {a['candidate'] * 100:.1f}%",
                f"drop {a['drop_pct']:.1f} pt",
            )
        )
    html = (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
            f'<div class="s">{escape(sub)}</div></div>'
            for k, v, sub in cards
        )
        + "</div>"
    )
    checks = [
        [escape(g["gate"]), f"{g['value']}", f"{g['limit']}", _verdict(g["passed"])] for g in doc.get("gates", [])
    ]
    t = doc.get("target")
    if t:
        goal = " and ".join(
            x
            for x in (
                t.get("min_sqnr") and f"min SQNR {t['min_sqnr']} dB",
                t.get("max_top1_drop") and f"top-1 drop {t['max_top1_drop']} %",
            )
            if x
        )
        checks.append(["accuracy target", escape(goal), "", _verdict(t["met"])])
    if checks:
        html += _table(["gate or target", "value", "limit", "result"], checks, "gates")
    facts = [
        [k, escape(str(v))]
        for k, v in (
            ("scheme", (doc.get("config") or {}).get("scheme")),
            ("status", doc.get("status")),
            ("fidelity data", doc.get("fidelity_data")),
        )
        if v
    ]
    return _section("summary", "Summary", html + _table(["", ""], facts, "facts"))


def _verdict(ok: bool) -> str:
    return '<span class="pass">pass</span>' if ok else '<span class="fail">FAIL</span>'


def warnings(doc: dict) -> str:
    items = "".join(f"<li>{escape(w)}</li>" for w in doc.get("warnings", []))
    return f'<section id="warnings" class="warn"><h2>Warnings</h2><ul>{items}</ul></section>' if items else ""


def network(doc: dict) -> str:
    layers = doc.get("layers") or []
    if not layers:
        return ""
    actions = {n["node"]: n["action"] for n in (doc.get("plan") or {}).get("nodes", [])}
    ordered = sorted(layers, key=lambda x: x.get("position", 0))

    def kind(x: dict) -> str:
        acts = [actions.get(n) for n in x.get("nodes", [x["node"]])]
        return "int8" if any(a in INT8 for a in acts) else "float" if any(acts) else "other"

    values = [
        (
            max(min(x["sqnr_db"], 80.0), 0.0),
            kind(x),
            f"{x['op_type']} {x['node']}: {db(x['sqnr_db'])} at its output, +{x['introduced']:.2g} noise power",
        )
        for x in ordered
    ]
    worst = sorted(layers, key=lambda x: -x["introduced"])[:5]
    rows = [[escape(x["op_type"]), escape(x["node"]), db(x["sqnr_db"]), f"+{x['introduced']:.2g}"] for x in worst]
    floor = max(0.0, min(v for v, _, _ in values) - 5)
    chart = svg.columns(values, "SQNR at each layer's output, in graph order", floor, [])
    legend = (
        '<p class="legend"><span class="int8">int8</span> <span class="float">float</span></p>'
        if actions
        else '<p class="legend">no plan to colour the layers by (another tool\'s model, or compare)</p>'
    )
    note = (
        f"SQNR of each layer's output against FP32, in graph order ({len(layers)} layers; bars capped at 80 dB); "
        "the layers that add the most noise:"
    )
    return _section(
        "network", "Error along the network", chart + legend + _table(["op", "node", "SQNR", "noise added"], rows), note
    )


def latency(doc: dict) -> str:
    lat = doc.get("latency")
    if not lat:
        return ""
    text = (
        f"{lat['reference_ms']:.3f} ms → {lat['candidate_ms']:.3f} ms ({lat['ratio']:.2f}x), "
        f"{lat['runs']} interleaved runs"
    )
    if lat.get("reference_quantiles_ms") and lat.get("candidate_quantiles_ms"):
        pics = svg.boxes(
            [("reference", lat["reference_quantiles_ms"], "ref"), ("candidate", lat["candidate_quantiles_ms"], "cand")],
            "latency of each model's runs",
        )
        return _section("latency", "Latency", pics, text + "; boxes p10-p90, whiskers min-max, a line at the median")
    return _section("latency", "Latency", "", text)


def size(doc: dict) -> str:
    parts = (doc.get("size") or {}).get("breakdown")
    if not parts:
        return ""
    rows = []
    for side in ("reference", "candidate"):
        for kind, n in parts[side].items():
            rows.append((f"{side}: {kind}", n / 1e6, "ref" if side == "reference" else "cand", f"{n} bytes"))
    why = [[escape(n), "speed"] for n in doc.get("float_for_speed") or []]
    why += [[escape(n), "accuracy"] for n in doc.get("float_for_accuracy") or []]
    table = _table(["node kept float", "for"], why) if why else ""
    return _section("size", "Size", svg.hbars(rows, "bytes by kind", " MB") + table, "Bytes by kind (MB)")


def target(doc: dict) -> str:
    t = doc.get("target")
    if not t or not t.get("steps"):
        return ""
    values = [
        (
            s["worst_sqnr_db"],
            "int8" if s["met"] else "float",
            f"{s['nodes_float']} node(s) back: worst output {db(s['worst_sqnr_db'])}",
        )
        for s in t["steps"]
    ]
    lines = [(t["min_sqnr"], f"target {t['min_sqnr']} dB")] if t.get("min_sqnr") else []
    chart = svg.columns(values, "the accuracy target's search", max(0.0, min(v for v, _, _ in values) - 5), lines)
    chosen = len(t.get("returned_to_float") or t.get("raised_to_8_bits") or [])
    final = (doc.get("latency") or {}).get("ratio")

    def timed(step: dict) -> str:  # only the all-int8 model and the one written are timed
        if step["nodes_float"] == 0 and t.get("all_int8_latency_ratio"):
            return f"{t['all_int8_latency_ratio']:.2f}x"
        return f"{final:.2f}x (written)" if step["met"] and step["nodes_float"] == chosen and final else "not timed"

    rows = [[str(s["nodes_float"]), db(s["worst_sqnr_db"]), _verdict(s["met"]), timed(s)] for s in t["steps"]]
    cost = t.get("all_int8_latency_ratio")
    note = "Each step of the search: nodes back to float against the worst output's SQNR" + (
        f"; the all-int8 model ran at {cost:.2f}x FP32's latency" if cost else ""
    )
    return _section(
        "target",
        "Accuracy target",
        chart + _table(["nodes float", "worst output", "met", "latency vs FP32"], rows),
        note,
    )


def calibration(doc: dict) -> str:
    pics = (doc.get("calibration") or {}).get("histograms") or {}
    if not pics:
        return ""
    body = []
    for name, h in pics.items():
        label = (
            f"{name}: {h['method']} range {h['range'][0]:.4g} to {h['range'][1]:.4g}, keeps "
            f"{h['kept'] * 100:.1f}% of the observed span {h['observed'][0]:.4g} to {h['observed'][1]:.4g}"
        )
        body.append(
            f"<figure><figcaption>{escape(label)}</figcaption>"
            f"{svg.histogram(h['counts'], tuple(h['observed']), tuple(h['range']), label)}</figure>"
        )
    note = "The most clipped and widest activation ranges: values seen (log scale), the chosen range marked"
    return _section("calibration", "Calibration", "".join(body), note)


def plan(doc: dict) -> str:
    nodes = (doc.get("plan") or {}).get("nodes") or []
    if not nodes:
        return ""
    rows = [
        [escape(n["node"]), escape(n["op_type"]), escape(n["action"]), escape((n.get("reason") or {}).get("text", ""))]
        for n in nodes
    ]
    box = '<input id="filter" type="search" placeholder="filter nodes (name, op, decision, reason)">'
    return _section(
        "plan",
        "Plan",
        box + _table(["node", "op", "decision", "reason"], rows, "plan"),
        f"Every node's decision and why ({len(nodes)} nodes)",
    )


def provenance(doc: dict, glossary: list[tuple[str, str]]) -> str:
    p = doc.get("provenance") or {}
    rows = [[escape(k), escape(str(v))] for k, v in p.items() if k != "data"]
    rows += [[escape(f"data: {k}"), escape(str(v))] for k, v in (p.get("data") or {}).items()]
    notes = "".join(f"<li>{escape(n)}</li>" for n in doc.get("notes", []))
    gl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in glossary)
    body = (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "") + _table(["", ""], rows, "facts")
    return _section("provenance", "Provenance and glossary", body + f"<dl>{gl}</dl>")
