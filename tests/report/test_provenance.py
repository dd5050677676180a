"""The report explains itself and can be audited: provenance (versions, CPU, command, data hashes), the
latency spread, the per-node plan and activation ranges and a glossary in the Markdown report."""

import hashlib
import json

import numpy as np
import onnx
from models import cnn, write_batches
from typer.testing import CliRunner

from qcli.cli.app import app
from qcli.report.provenance import data_hash


def test_data_hash_is_sha256_of_names_and_bytes_in_order(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros(3, np.float32))
    np.save(b, np.ones(3, np.float32))
    h = hashlib.sha256()
    for p in (a, b):
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
    assert data_hash([a, b]) == h.hexdigest()
    assert data_hash([b, a]) != data_hash([a, b])
    np.save(b, np.full(3, 2, np.float32))
    assert data_hash([a, b]) != h.hexdigest()  # one changed value changes the hash


def test_quantize_report_has_provenance_spread_plan_ranges_and_glossary(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 3, 16, 16)] * 6)
    args = ["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c"), "-o", str(tmp_path / "q.onnx")]
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    p = r["provenance"]
    assert p["versions"]["onnx"] == onnx.__version__ and p["command"].startswith("qcli")  # from sys.argv: pytest here
    calib_files = [tmp_path / "c" / f for f in r["calibration"]["files"]]
    eval_files = [tmp_path / "c" / f for f in r["fidelity_files"]]
    # 1 of 6 held aside to measure the decisions, then added to the ranges where that measures no worse
    assert len(calib_files) == (6 if r["verified"]["written"] == "refit" else 5)
    assert p["data"]["calibration"] == {"files": len(calib_files), "sha256": data_hash(calib_files)}
    assert p["data"]["evaluation"] == {"files": 1, "sha256": data_hash(eval_files)}
    lat = r["latency"]
    for key, median in (("reference_p10_p90", "reference_ms"), ("candidate_p10_p90", "candidate_ms")):
        lo, hi = lat[key]
        assert lo <= lat[median] <= hi
    md = (tmp_path / "q.onnx.report.md").read_text()
    for section in ("## Plan: every node", "## Activation ranges", "## Provenance", "## Glossary"):
        assert section in md
    assert "| `conv2` | Conv | int8 |" in md and "**int8-float-out**" in md
