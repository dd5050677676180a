"""Three real reports as HTML pages, made once per test session: a W8A8 CNN with an accuracy target, a
weight-only (w4a16) encoder, and a compare --per-layer (through the CLI's --html)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qcli import QuantConfig, Scheme, quantize
from qcli.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"


def make_pages(folder: Path) -> dict[str, tuple[Path, dict]]:
    """name -> (the page, the JSON report it was drawn from)."""
    cnn = SAMPLES / "cnn"
    target = quantize(cnn / "model.onnx", QuantConfig.of(min_sqnr=45.0), calib=cnn / "calib", eval_dir=cnn / "eval",
                      out=folder / "cnn" / "q.onnx", latency_runs=5)  # fmt: skip
    att = SAMPLES / "attention"
    quantize(att / "model.onnx", QuantConfig.of(scheme=Scheme.W4A16), eval_dir=att / "eval",
             out=folder / "att" / "q.onnx", latency_runs=5)  # fmt: skip
    page = folder / "cmp" / "compare.html"
    r = CliRunner().invoke(app, ["compare", str(cnn / "model.onnx"), str(target.output), "--data", str(cnn / "eval"),
                                 "--per-layer", "--runs", "5", "--json", "--html", str(page)])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = {}
    for name, q in (("w8a8-target", folder / "cnn" / "q.onnx"), ("w4a16", folder / "att" / "q.onnx")):
        out[name] = (Path(f"{q}.report.html"), json.loads(Path(f"{q}.report.json").read_text()))
    out["compare-per-layer"] = (page, json.loads(r.stdout))
    return out
