"""The HTML report: one self-contained file (styles and a ten-line filter script inline, charts as inline SVG,
nothing fetched; a Content-Security-Policy that makes any fetch fail loudly), drawn from the report's JSON so
that `qcli report OUT.report.json --html FILE` redraws a saved report. Light and dark (the reader's setting),
printable, readable at 1280 px and on a phone.

Hand-written SVG rather than a plotting library: the pictures are bars, boxes and histograms, which need a
few dozen lines; a library would add megabytes of inline script and a dependency for no figure it draws better.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from qcli.io.model_io import write_text_atomic
from qcli.report.html import sections as s

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
:root{--bg:#fff;--fg:#1d2329;--mute:#5c6670;--line:#d8dde2;--int8:#2f6fb0;--float:#c7772a;--other:#8a949e;
--ref:#8a949e;--cand:#2f6fb0;--pass:#1f7a3a;--fail:#b3261e;--card:#f4f6f8;--clip:rgba(179,38,30,.12)}
@media (prefers-color-scheme:dark){:root{--bg:#15191d;--fg:#e3e7eb;--mute:#9aa4ad;--line:#333a41;--int8:#6aa6e8;
--float:#e39a52;--other:#7d8791;--ref:#7d8791;--cand:#6aa6e8;--pass:#5cc27a;--fail:#ff8a80;--card:#1e2429;
--clip:rgba(255,138,128,.16)}}
*{box-sizing:border-box}body{margin:0 auto;max-width:1100px;padding:16px;background:var(--bg);color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;border-bottom:1px solid var(--line);padding-bottom:4px;
margin-top:1.6em}.lead,.legend,figcaption{color:var(--mute);font-size:.92em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px}
.card{background:var(--card);border-radius:6px;padding:10px}.card .k{color:var(--mute);font-size:.85em}
.card .v{font-size:1.25em;font-weight:600}.card .s{font-size:.85em}
table{border-collapse:collapse;width:100%;margin:10px 0;font-size:.9em}td,th{text-align:left;padding:4px 6px;
border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}th{color:var(--mute)}
.pass{color:var(--pass);font-weight:600}.fail{color:var(--fail);font-weight:700}
.warn{border-left:4px solid var(--fail);padding-left:10px}
.chart{width:100%;height:auto;display:block}.chart text{fill:currentColor;font-size:12px}
.chart .tick,.chart .val{fill:var(--mute)}.axis,.grid,.whisker{stroke:var(--line)}.grid{stroke-dasharray:2 3}
.int8,rect.int8{fill:var(--int8);color:var(--int8)}.float,rect.float{fill:var(--float);color:var(--float)}
rect.other{fill:var(--other)}rect.ref{fill:var(--ref)}rect.cand{fill:var(--cand)}rect.hist{fill:var(--int8)}
rect.clip{fill:var(--clip)}.mark{stroke:var(--fail);stroke-width:1.5}.marklab{fill:var(--fail)!important}
.median{stroke:var(--fg);stroke-width:2}.whisker{stroke-width:2}
#filter{width:100%;padding:6px;margin:6px 0;background:var(--bg);color:var(--fg);border:1px solid var(--line)}
.facts td:first-child{white-space:nowrap;color:var(--mute)}
figure{margin:12px 0}dt{font-weight:600}dd{margin:0 0 6px 16px;color:var(--mute)}
@media (max-width:600px){body{padding:8px;font-size:14px}.plan td:nth-child(4){display:none}}
@media print{#filter{display:none}section{break-inside:avoid}body{max-width:none}}
"""

SCRIPT = """
const box=document.getElementById('filter');
if(box){box.addEventListener('input',()=>{const q=box.value.toLowerCase();
for(const r of document.querySelectorAll('table.plan tbody tr')){
r.style.display=r.textContent.toLowerCase().includes(q)?'':'none';}});}
"""


def render_html(doc: dict) -> str:
    from qcli.report.render import GLOSSARY

    name = Path(str(doc.get("candidate", ""))).name
    title = f"qcli {doc.get('kind', 'report')}: {name}"
    parts = [
        s.warnings(doc),
        s.summary(doc),
        s.network(doc),
        s.latency(doc),
        s.size(doc),
        s.target(doc),
        s.calibration(doc),
        s.plan(doc),
        s.provenance(doc, GLOSSARY),
    ]
    schema = doc.get("schema_version", "?")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{escape(title)}</h1><p class="lead">reference {escape(str(doc.get("reference")))} · '
        f"report schema {escape(str(schema))}</p></header>"
        + "".join(parts)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_html(doc: dict, path: Path, page: str | None = None) -> Path:
    """Write the page (`page`: already drawn from `doc`) atomically (a temp file beside it, then a rename),
    with the umask's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_html(doc) if page is None else page)
    return path
