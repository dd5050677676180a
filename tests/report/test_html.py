"""The HTML report without a browser: one self-contained file, nothing fetched, every string escaped, key
figures as page text formatted as on the terminal, sections only where there is data."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from qcli.cli.app import app
from qcli.report.html import CSP, render_html
from qcli.report.html.sections import db, mb

from .pages import make_pages

FETCH = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    return make_pages(tmp_path_factory.mktemp("pages"))


def key_figures(doc: dict) -> list[str]:
    """What the page must show as text, formatted as the terminal formats it."""
    s, lat = doc["size"], doc["latency"]
    out = [f"{mb(s['reference_bytes'])} → {mb(s['candidate_bytes'])}", f"{s['ratio']:.2f}x", f"{lat['ratio']:.2f}x"]
    out += [f"{lat['reference_ms']:.3f} ms → {lat['candidate_ms']:.3f} ms"]
    out += [db(o["sqnr_db"]) for o in doc["outputs"]]
    if doc.get("target"):
        out += [db(s["worst_sqnr_db"]) for s in doc["target"]["steps"]]
        out += [f"{doc['target']['all_int8_latency_ratio']:.2f}x", f"{lat['ratio']:.2f}x (written)"]
    return out


def test_every_page_is_self_contained_and_shows_the_jsons_figures(pages):
    for name, (page, doc) in pages.items():
        text = page.read_text(encoding="utf-8")
        assert f'content="{CSP}"' in text and "default-src 'none'" in CSP, name
        assert not FETCH.search(text) and "http://" not in text and "https://" not in text, name
        for figure in key_figures(doc):
            assert figure in text, (name, figure)
    cnn = pages["w8a8-target"][0].read_text(encoding="utf-8")
    for section in ("summary", "network", "latency", "size", "target", "calibration", "plan", "provenance"):
        assert f'<section id="{section}">' in cnn
    assert '<section id="target">' not in pages["w4a16"][0].read_text(encoding="utf-8")
    cmp = pages["compare-per-layer"][0].read_text(encoding="utf-8")
    assert '<section id="network">' in cmp and '<section id="plan">' not in cmp


def test_strings_from_the_model_are_escaped():
    doc = json.loads(json.dumps({"kind": "compare", "candidate": "x.onnx", "warnings": ["<script>alert(1)</script>"],
                                 "layers": [{"tensor": "t", "node": "<img src=x onerror=alert(1)>", "op_type": "Conv",
                                             "sqnr_db": 30.0, "introduced": 0.01}]}))  # fmt: skip
    text = render_html(doc)
    assert "<script>alert" not in text and "<img src=x" not in text and "&lt;img src=x onerror" in text


def test_the_fetch_check_bites():
    assert FETCH.search('<img src="https://example.com/a.png">') and FETCH.search("background:url(//cdn.x/y)")
    assert FETCH.search("<a href='http://x'>") and not FETCH.search('<a href="#plan">')


def test_qcli_report_redraws_a_saved_report_and_refuses_others(pages, tmp_path):
    page, doc = pages["w8a8-target"]
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(doc))
    r = CliRunner().invoke(app, ["report", str(saved), "--html", str(tmp_path / "again.html")])
    again = (tmp_path / "again.html").read_text(encoding="utf-8")
    assert r.exit_code == 0 and again == page.read_text(encoding="utf-8")
    saved.write_text(json.dumps(doc | {"schema_version": 99}))
    r = CliRunner().invoke(app, ["report", str(saved), "--html", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "report schema 99; this qcli reads up to 1" in r.output
    saved.write_text('{"a": 1}')
    r = CliRunner().invoke(app, ["report", str(saved), "--html", str(tmp_path / "x.html")])
    assert r.exit_code == 2 and "is not a qcli report" in r.output and not (tmp_path / "x.html").exists()
