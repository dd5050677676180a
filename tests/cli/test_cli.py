"""The command line: exit codes, one-line errors without tracebacks, JSON on stdout, input never touched."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import cnn, write_batches
from typer.testing import CliRunner

from qcli.cli.app import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    write_batches(tmp_path / "calib", [(2, 3, 16, 16)] * 5)
    write_batches(tmp_path / "eval", [(4, 3, 16, 16)] * 2, seed=7)
    return tmp_path


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_quantize_then_compare_with_passing_gates(files):
    before = digest(files / "m.onnx")
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["kind"] == "quantize" and report["size"]["ratio"] < 0.5
    assert (files / "q.onnx.report.json").exists() and (files / "q.onnx.report.md").exists()
    assert digest(files / "m.onnx") == before
    r = run(
        "compare",
        files / "m.onnx",
        files / "q.onnx",
        "--data",
        files / "eval",
        "--json",
        "--runs",
        3,
        "--min-sqnr",
        15,
        "--max-top1-drop",
        50,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["gates"] and all(g["passed"] for g in out["gates"])
    assert out["outputs"][0]["top1_agreement"] is not None


def test_compare_gate_failure_exits_1_with_one_line_reason(files):
    assert run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx").exit_code == 0
    r = run("compare", files / "m.onnx", files / "q.onnx", "--data", files / "eval", "--min-sqnr", 200, "--runs", 2)
    assert r.exit_code == 1
    assert "gate failed: min-sqnr" in r.stderr and "Traceback" not in r.output


def test_default_output_name_and_dry_run_writes_nothing(files):
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "--dry-run")
    assert r.exit_code == 0 and "int8" in r.stderr
    assert not (files / "m.int8.onnx").exists()
    r = run("quantize", files / "m.onnx", "--calib", files / "calib")
    assert r.exit_code == 0 and (files / "m.int8.onnx").exists()


def test_dry_run_says_how_the_ranges_were_chosen_and_what_it_did_not_run(files):
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "--dry-run")
    assert any(ln.startswith("calibration: auto (minmax: ") for ln in r.stderr.splitlines())
    assert "note: --dry-run: the plan before the accuracy guard, measured placement" in r.stderr
    assert "were not run: the model written may differ from this plan by what they decide" in r.stderr
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "--dry-run", "--json")
    plan = json.loads(r.stdout)
    assert plan["calibration"]["method"] == "auto" and plan["calibration"]["search"]["base"] == "minmax"
    assert any(n.startswith("--dry-run: the plan before") for n in plan["notes"])


def test_help_shows_examples():
    r = run("quantize", "--help")
    assert r.exit_code == 0 and "qcli quantize model.onnx --calib data/" in r.stdout


BAD = {
    "missing model": (lambda d: ["quantize", d / "nope.onnx", "--calib", d / "calib"], "model file not found"),
    "model is a folder": (
        lambda d: ["quantize", d, "--calib", d / "calib"],
        "is a folder, not an ONNX model file (it holds junk.onnx, m.onnx)",
    ),
    "not onnx": (lambda d: ["quantize", d / "junk.onnx", "--calib", d / "calib"], "cannot read"),
    "missing calib": (lambda d: ["quantize", d / "m.onnx", "--calib", d / "nodir"], "data not found"),
    "no calib for w8a8": (
        lambda d: ["quantize", d / "m.onnx"],
        "needs calibration data: pass --calib DIR (without data: --scheme dynamic",
    ),
    "calib is the model": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "m.onnx"],
        "m.onnx is an ONNX model, not data",
    ),
    "calib is one .npy": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "calib" / "b00.npy"],
        "b00.npy is a single .npy file: qcli reads a folder of them",
    ),
    "calib is a csv": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "x.csv"],
        "x.csv is a .csv file, which qcli reads only through a recipe",
    ),
    "empty calib": (lambda d: ["quantize", d / "m.onnx", "--calib", d / "empty"], "holds no .npy/.npz arrays"),
    "wrong shape": (lambda d: ["quantize", d / "m.onnx", "--calib", d / "badshape"], "dimension 1 must be 3"),
    "wrong rank": (lambda d: ["quantize", d / "m.onnx", "--calib", d / "badrank"], "rank 4"),
    "nan": (lambda d: ["quantize", d / "m.onnx", "--calib", d / "nan"], "NaN"),
    "wrong names": (lambda d: ["quantize", d / "m.onnx", "--calib", d / "badnpz"], "missing ['x']"),
    "output is a folder": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "calib", "-o", d / "dir.onnx"],
        "dir.onnx is a folder: choose another -o path",
    ),
    "a report path is a folder": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "calib", "-o", d / "r.onnx"],
        "r.onnx.report.json is a folder: choose another -o path",
    ),
    "output is input": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "calib", "-o", d / "m.onnx"],
        "is the input model",
    ),
    "bad scheme": (lambda d: ["quantize", d / "m.onnx", "--scheme", "w3a3"], "w3a3"),
    "target of nan dB": (
        lambda d: ["quantize", d / "m.onnx", "--calib", d / "calib", "--min-sqnr", "nan"],
        "--min-sqnr must be a number of dB (got nan)",
    ),
    "gate of nan dB": (
        lambda d: ["compare", d / "m.onnx", d / "m.onnx", "--min-sqnr", "nan"],
        "--min-sqnr must be a number of dB",
    ),
    "negative top-1 gate": (
        lambda d: ["compare", d / "m.onnx", d / "m.onnx", "--max-top1-drop", "-5"],
        "--max-top1-drop must be a percentage from 0 to 100 (got -5)",
    ),
    "negative accuracy gate": (
        lambda d: ["compare", d / "m.onnx", d / "m.onnx", "--max-accuracy-drop", "-1"],
        "--max-accuracy-drop must be a percentage from 0 to 100 (got -1)",
    ),
    "block size": (lambda d: ["quantize", d / "m.onnx", "--scheme", "w4a16", "--block-size", "48"], "power of two"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_a_clear_error_with_exit_2(files, case):
    (files / "junk.onnx").write_bytes(b"this is not protobuf at all")
    (files / "x.csv").write_text("1,2,3\n")
    (files / "empty").mkdir()
    (files / "dir.onnx").mkdir()
    (files / "r.onnx.report.json").mkdir()
    write_batches(files / "badshape", [(1, 4, 16, 16)])
    write_batches(files / "badrank", [(3, 16, 16)])
    (files / "nan").mkdir()
    np.save(files / "nan" / "a.npy", np.full((1, 3, 16, 16), np.nan, np.float32))
    (files / "badnpz").mkdir()
    np.savez(files / "badnpz" / "a.npz", input=np.zeros((1, 3, 16, 16), np.float32))
    before = digest(files / "m.onnx")
    args, message = BAD[case]
    r = run(*args(files))
    assert r.exit_code == 2, r.output
    assert message in r.output.replace("\n", " ") or message in " ".join(r.output.split())
    assert "Traceback" not in r.output
    assert digest(files / "m.onnx") == before


OVER_INPUTS = {  # an output named over something the run reads: refused before any work, every input intact
    "compare --html over the reference": (lambda d: ["compare", d / "m.onnx", d / "q.onnx", "--html", d / "m.onnx"]),
    "compare --html over the candidate": (lambda d: ["compare", d / "m.onnx", d / "q.onnx", "--html", d / "q.onnx"]),
    "compare --html over a data file": (
        lambda d: ["compare", d / "m.onnx", d / "q.onnx", "--data", d / "eval", "--html", d / "eval" / "b00.npy"]
    ),
    "report --html over the report": (
        lambda d: ["report", d / "q.onnx.report.json", "--html", d / "q.onnx.report.json"]
    ),
    "--save-plan over a calibration file": (
        lambda d: [
            "quantize",
            d / "m.onnx",
            "--calib",
            d / "calib",
            "-o",
            d / "o.onnx",
            "--save-plan",
            d / "calib" / "b01.npy",
        ]
    ),
    "--html over an image in the data": (
        lambda d: ["compare", d / "m.onnx", d / "q.onnx", "--data", d / "calib", "--html", d / "calib" / "p.png"]
    ),
}


@pytest.mark.parametrize("case", OVER_INPUTS, ids=list(OVER_INPUTS))
def test_an_output_never_replaces_an_input(files, case):
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    assert r.exit_code == 0, r.output
    (files / "calib" / "p.png").write_bytes(b"an image beside the arrays: data of another kind")
    reads = [p for p in files.rglob("*") if p.is_file()]
    before = {p: digest(p) for p in reads}
    r = run(*OVER_INPUTS[case](files))
    assert r.exit_code == 2, r.output
    assert "never writes over what it reads" in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert {p: digest(p) for p in reads} == before
    assert sorted(p for p in files.rglob("*") if p.is_file()) == sorted(reads)  # and nothing else written


def test_a_run_may_write_beside_its_data_and_again(files):
    """A data folder holding the run's own model and reports (not data) takes them again on a second run."""
    for _ in range(2):
        r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "calib" / "q.onnx")
        assert r.exit_code == 0, r.output
    html = files / "calib" / "c.html"
    r = run("compare", files / "m.onnx", files / "calib" / "q.onnx", "--data", files / "calib", "--html", html)
    assert r.exit_code == 0 and html.is_file(), r.output


def test_npz_and_sample_folder_layouts(files, tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "npz").mkdir()
    (tmp_path / "folders").mkdir()
    for i in range(3):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float64)  # float64 is cast to the model's float32
        np.savez(tmp_path / "npz" / f"{i}.npz", x=x)
        (tmp_path / "folders" / f"s{i}").mkdir()
        np.save(tmp_path / "folders" / f"s{i}" / "x.npy", x)
    for layout in ("npz", "folders"):
        r = run("quantize", files / "m.onnx", "--calib", tmp_path / layout, "-o", tmp_path / f"{layout}.onnx")
        assert r.exit_code == 0, r.output


def test_unexpected_failure_is_one_line_exit_3(files, monkeypatch):
    import qcli.pipeline
    import qcli.schemes.w8a8.handler

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(qcli.pipeline, "preprocess", boom)
    r = run("quantize", files / "m.onnx", "--calib", files / "calib")
    assert r.exit_code == 3 and "internal error" in r.stderr and "Traceback" not in r.output


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("qcli ")


def test_quantizing_a_quantized_model_changes_nothing_and_says_why(files):
    assert run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx").exit_code == 0
    args = ["quantize", files / "q.onnx", "--calib", files / "calib", "-o", files / "qq.onnx", "--json"]
    r = run(*args, "--allow-quantized")  # without it: refused (below)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert any("quantized already" in n for n in report["warnings"])
    assert report["outputs"][0]["max_abs"] == 0.0


def test_every_quantize_flag_reaches_the_config_in_the_report(files):
    r = run(
        "quantize",
        files / "m.onnx",
        "--calib",
        files / "calib",
        "-o",
        files / "q.onnx",
        "--json",
        "--per-tensor",
        "--activation-symmetric",
        "--no-reduce-range",
        "--calib-limit",
        4,
        "--min-macs",
        7,
        "--min-act-sqnr",
        0,
        "--exclude",
        "conv3",
        "--calibrator",
        "minmax",
    )
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)["config"]
    assert (c["per_channel"], c["activation_symmetric"], c["reduce_range"]) == (False, True, False)
    assert (c["calib_limit"], c["min_macs_per_conversion"], c["min_activation_sqnr"]) == (4, 7.0, 0.0)
    assert (c["exclude"], c["calibrator"]) == (["conv3"], "minmax")
    r = run(
        "quantize",
        files / "m.onnx",
        "--scheme",
        "w4a16",
        "-o",
        files / "q4.onnx",
        "--json",
        "--block-size",
        16,
        "--weight-asymmetric",
        "--weight-algo",
        "gptq",
        "--gptq-damp",
        0.2,
        "--act-order",
        "--clip-search",
        "--format",
        "ort",
        "--calib",
        files / "calib",
    )
    c = json.loads(r.stdout)["config"]
    assert (c["scheme"], c["block_size"], c["weight_symmetric_int4"]) == ("w4a16", 16, False)
    assert (c["weight_algo"], c["gptq_damp"], c["gptq_act_order"], c["clip_search"]) == ("gptq", 0.2, True, True)
    assert c["weight_format"] == "ort"


def test_help_keeps_placeholders_in_angle_brackets():
    r = runner.invoke(app, ["quantize", "--help"], env={"COLUMNS": "200"})
    assert "<sample>/<input>.npy" in r.stdout and "<model>.int8.onnx" in r.stdout and "<model>.int4.onnx" in r.stdout


def test_errors_keep_text_in_square_brackets_and_stay_on_one_line(files):
    write_batches(files / "badshape", [(1, 4, 16, 16)])
    r = run("quantize", files / "m.onnx", "--calib", files / "badshape")
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("qcli: ")]  # not progress
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "has shape [1, 4, 16, 16]; dimension 1 must be 3 (m.onnx expects [N, 3, 16, 16])" in lines[0]


def test_output_off_a_terminal_is_plain_lines_never_cut(files):
    """CliRunner's stderr is not a TTY: no box drawing, no wrapping at 80 columns, no names cut with '…'."""
    m = onnx.load(str(files / "m.onnx"))
    long = "/features/" + "very_long_block_name/" * 8 + "Conv"
    next(n for n in m.graph.node if n.name == "conv3").name = long
    onnx.save(m, files / "long.onnx")
    r = run("quantize", files / "long.onnx", "--calib", files / "calib", "-o", files / "q.onnx", "--min-macs", 1e9)
    assert r.exit_code == 0, r.output
    assert not set("│┃┌└─…") & set(r.stderr)
    assert any(ln.startswith("kept float for speed: ") and long in ln for ln in r.stderr.splitlines())
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("qcli: ")]
    assert [ln.split(" (")[0].split(" ...")[0] for ln in progress[:6]] == [
        "qcli: calibrating",
        "qcli: bias correction",
        "qcli: activation pass",
        "qcli: accuracy guard",
        "qcli: measured placement",
        "qcli: saving",  # every layer float for speed: no range refit to verify
    ]  # one plain line per phase off a terminal
    assert r.stderr.splitlines()[len(progress)] == "qcli quantize: q.onnx"


def test_a_broken_model_of_qcli_s_own_making_is_exit_3_not_the_users_fault(files, monkeypatch):
    import qcli.pipeline
    import qcli.schemes.w8a8.handler

    real = qcli.schemes.w8a8.handler.apply_unscaled

    def broken(model, plan, scaling):
        q, names = real(model, plan, scaling)
        del q.graph.node[0]  # a tensor is read that nothing produces now
        return q, names

    monkeypatch.setattr(qcli.schemes.w8a8.handler, "apply_unscaled", broken)
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    assert r.exit_code == 3 and "internal error" in r.stderr and "Traceback" not in r.output
    assert not (files / "q.onnx").exists()


def test_a_qcli_model_onnxruntime_cannot_run_is_exit_3(files, monkeypatch):
    """The checker passes, onnxruntime refuses: still qcli's fault (exit 3), not the user's (exit 2)."""
    import qcli.pipeline
    import qcli.schemes.w8a8.handler

    real = qcli.schemes.w8a8.handler.apply_unscaled

    def bad_attr(model, plan, scaling):
        q, names = real(model, plan, scaling)
        conv = next(n for n in q.graph.node if n.op_type == "Conv")
        conv.attribute.append(onnx.helper.make_attribute("group", 7))  # wrong group count for the weights
        return q, names

    monkeypatch.setattr(qcli.schemes.w8a8.handler, "apply_unscaled", bad_attr)
    monkeypatch.setattr(qcli.pipeline, "check_output", lambda m, s: True)
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    assert r.exit_code == 3, r.output
    assert "internal error" in r.stderr and "Traceback" not in r.output


def test_on_a_terminal_brackets_in_messages_and_reports_survive_rich_markup(files, monkeypatch):
    import io
    import re

    from rich.console import Console

    import qcli.cli.output
    import qcli.cli.quantize

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=300)
    monkeypatch.setattr(qcli.cli.quantize, "err", console)
    monkeypatch.setattr(qcli.cli.output, "err", console)
    write_batches(files / "badshape", [(1, 4, 16, 16)])
    r = run("quantize", files / "m.onnx", "--calib", files / "badshape")
    text = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())
    assert r.exit_code == 2 and "(m.onnx expects [N, 3, 16, 16])" in text
    buf.truncate(0)
    m = onnx.load(str(files / "m.onnx"))
    next(n for n in m.graph.node if n.name == "conv3").name = "[bold]conv3[/bold]"
    onnx.save(m, files / "b.onnx")
    r = run("quantize", files / "b.onnx", "--calib", files / "calib", "-o", files / "q.onnx", "--min-macs", 1e9)
    text = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())
    assert r.exit_code == 0 and "[bold]conv3[/bold]" in text


def test_compare_prints_its_result_on_stdout_and_json_keeps_stdout_for_json(files):
    """`qcli compare ... > result.txt` holds the result; progress and gate failures stay on stderr."""
    assert run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx").exit_code == 0
    args = ["compare", files / "m.onnx", files / "q.onnx", "--data", files / "eval", "--runs", "2"]
    r = run(*args, "--min-sqnr", "200")
    assert r.exit_code == 1 and "qcli compare: q.onnx" in r.stdout and "gate: min-sqnr FAILED" in r.stdout
    assert "gate failed:" in r.stderr and "gate failed:" not in r.stdout and "qcli: " not in r.stdout
    r = run(*args, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["kind"] == "compare" and "qcli compare: q.onnx" in r.stderr


def test_an_unwritable_output_is_exit_2_before_any_work(files):
    (files / "afile").write_text("")
    for out, why in ((files / "afile" / "q.onnx", "is a file, not a folder"), (Path("/proc/qcli/q.onnx"), "")):
        r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", out)
        assert r.exit_code == 2 and f"error: cannot write {out}: " in r.stderr and why in r.stderr, r.output
        assert "qcli: calibrating" not in r.stderr and "internal error" not in r.stderr


def test_an_input_the_onnx_checker_rejects_is_the_users_to_fix_exit_2(files):
    """Unsorted nodes: onnxruntime runs the model, onnx.checker rejects it and so the model written from it."""
    m = onnx.load(files / "m.onnx")
    nodes = list(m.graph.node)[::-1]
    m.graph.ClearField("node")
    m.graph.node.extend(nodes)
    onnx.save(m, files / "unsorted.onnx")
    r = run("quantize", files / "unsorted.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    assert r.exit_code == 2 and "unsorted.onnx itself fails onnx.checker" in r.stderr, r.output
    assert r.stderr.rstrip().endswith("so that onnx.checker.check_model accepts it") and not (files / "q.onnx").exists()


def test_float64_data_for_a_float32_input_is_converted_and_says_so(files):
    (files / "f64").mkdir()
    for f in sorted((files / "calib").glob("*.npy")):
        np.save(files / "f64" / f.name, np.load(f).astype(np.float64))
    r = run("quantize", files / "m.onnx", "--calib", files / "f64", "-o", files / "q.onnx")
    note = "note: input 'x': the data is float64, converted to the model's float32"
    assert r.exit_code == 0 and note in r.stderr, r.output
    assert note[6:] in json.loads((files / "q.onnx.report.json").read_text())["notes"]
    r = run("compare", files / "m.onnx", files / "q.onnx", "--data", files / "f64", "--runs", "2")
    assert r.exit_code == 0 and note in r.stdout
    r = run("compare", files / "m.onnx", files / "q.onnx", "--data", files / "calib", "--runs", "2")
    assert "converted" not in r.stdout


def test_every_data_folder_is_checked_before_the_first_expensive_step(files):
    """A bad file at the end of --eval: exit 2 before calibrating, no model left behind."""
    write_batches(files / "eval2", [(4, 3, 16, 16)] * 3 + [(4, 3, 16, 17)], seed=7)
    args = ["quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx"]
    r = run(*args, "--eval", files / "eval2")
    assert r.exit_code == 2 and "b03.npy: input 'x' has shape [4, 3, 16, 17]; dimension 3 must be 16" in r.stderr
    assert "qcli: calibrating" not in r.stderr and not (files / "q.onnx").exists()
    (files / "eval3").mkdir()
    for i in range(3):
        np.savez(files / "eval3" / f"{i}.npz", x=np.zeros((1, 3, 16, 16), np.float32))
    np.savez(files / "eval3" / "z.npz", y=np.zeros((1, 3, 16, 16), np.float32))
    r = run(*args, "--eval", files / "eval3")
    assert r.exit_code == 2 and "z.npz: inputs do not match m.onnx: missing ['x'], unexpected ['y']" in r.stderr
    assert "qcli: calibrating" not in r.stderr and not (files / "q.onnx").exists()


def test_compare_without_data_reports_size_and_latency_and_says_fidelity_needs_data(files):
    assert run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx").exit_code == 0
    r = run("compare", files / "m.onnx", files / "q.onnx", "--runs", "3", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["size"]["candidate_bytes"] < doc["size"]["reference_bytes"] and doc["latency"]["runs"] == 3
    assert doc["outputs"] == [] and any("no --data: fidelity not measured" in n for n in doc["notes"])
    r = run("compare", files / "m.onnx", files / "q.onnx", "--max-top1-drop", "1")
    assert r.exit_code == 2 and "--max-top1-drop needs evaluation data: pass --data DIR" in r.stderr


def test_an_already_quantized_model_is_refused_unless_asked(files):
    import collections

    assert run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx").exit_code == 0
    r = run("quantize", files / "q.onnx", "--calib", files / "calib", "-o", files / "qq.onnx")
    assert r.exit_code == 2 and "q.onnx is already quantized (DequantizeLinear x" in r.stderr
    assert "--allow-quantized" in r.stderr and not (files / "qq.onnx").exists()
    r = run("quantize", files / "q.onnx", "--calib", files / "calib", "-o", files / "qq.onnx", "--allow-quantized")
    assert r.exit_code == 0, r.output
    before = collections.Counter(n.op_type for n in onnx.load(files / "q.onnx").graph.node)
    after = collections.Counter(n.op_type for n in onnx.load(files / "qq.onnx").graph.node)
    assert (
        after["QuantizeLinear"] >= before["QuantizeLinear"] and after["DequantizeLinear"] >= before["DequantizeLinear"]
    )


def test_too_little_disk_for_the_output_is_exit_2_before_any_work(files, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    says = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "MB (the input model's size and the reports)" in says and "0.0 MB free" in says, says
    assert "qcli: calibrating" not in r.stderr and not (files / "q.onnx").exists()


@pytest.mark.parametrize("fails", ["the model", "a report"])
def test_a_write_the_system_refuses_mid_run_is_exit_2_naming_the_file(files, monkeypatch, fails):
    """A disk filling up (or a folder removed) after the checks: the environment's failure, not a bug."""
    import errno
    import os

    from qcli.io import model_io

    real = os.replace

    def full(src, dst):
        if (fails == "the model") == str(dst).endswith(".onnx"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(model_io.os, "replace", full)
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    says = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "cannot write" in says and "No space left on device" in says, r.output
    assert "internal error" not in says and "Traceback" not in r.output
    assert (files / "q.onnx").exists() == (fails == "a report")  # the model is complete or absent
    assert not [p for p in files.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_recipe_given_with_array_data_is_checked_then_named_unused(files, tmp_path):
    (tmp_path / "broken.toml").write_text("[x")
    (tmp_path / "ok.toml").write_text('[inputs.x]\nkind = "image"\nresize = [16, 16]\n')
    q = ["quantize", files / "m.onnx", "--calib", files / "calib", "-o", tmp_path / "q.onnx"]
    for recipe, says in ((tmp_path / "nope.toml", "recipe not found"), (tmp_path / "broken.toml", "not valid TOML")):
        r = run(*q, "--recipe", recipe)
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "q.onnx").exists()
    r = run(*q, "--recipe", tmp_path / "ok.toml", "--json")
    assert r.exit_code == 0, r.output
    unused = f"--recipe {tmp_path / 'ok.toml'} not used for {files / 'calib'}: it holds .npy/.npz arrays"
    assert any(w.startswith(unused) for w in json.loads(r.stdout)["warnings"]), r.stdout
    r = run(
        "compare", files / "m.onnx", tmp_path / "q.onnx", "--data", files / "eval", "--recipe", tmp_path / "ok.toml"
    )
    assert r.exit_code == 0 and "not used for" in " ".join(r.output.split()), r.output


def test_calibration_data_of_one_value_is_named_in_a_warning(files, tmp_path):
    (tmp_path / "zeros").mkdir()
    for i in range(3):
        np.save(tmp_path / "zeros" / f"b{i}.npy", np.zeros((2, 3, 16, 16), np.float32))
    for data, warned in ((tmp_path / "zeros", True), (files / "calib", False)):
        r = run("quantize", files / "m.onnx", "--calib", data, "-o", tmp_path / "q.onnx", "--json")
        assert r.exit_code == 0, r.output
        said = [w for w in json.loads(r.stdout)["warnings"] if "holds the one value" in w]
        assert len(said) == warned, said
        assert all(w.startswith("calibration data: input 'x' holds the one value 0 in every file") for w in said)


@pytest.mark.parametrize("edit", [{"size": "big"}, {"layers": 7}, {"outputs": [1, 2]}, {"latency": {"x": 1}}])
def test_a_report_edited_out_of_shape_is_the_users_error(files, edit):
    """Report files are untrusted input: `qcli report` on one that no longer reads as qcli's is exit 2."""
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx", "--no-html")
    assert r.exit_code == 0, r.output
    doc = json.loads((files / "q.onnx.report.json").read_text())
    r = run("report", files / "q.onnx.report.json", "--html", files / "good.html")
    assert r.exit_code == 0 and (files / "good.html").is_file(), r.output
    (files / "edited.json").write_text(json.dumps(doc | edit))
    r = run("report", files / "edited.json", "--html", files / "edited.html")
    says = " ".join(r.output.split())
    assert r.exit_code == 2 and "is not a report as qcli writes it" in says and "internal error" not in says, says
    assert not (files / "edited.html").exists()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["quantize", "m.onnx", "--calib-limit", "abc"], "error: Invalid value for '--calib-limit':"),
        (["quantize"], "error: Missing argument 'model'."),
        (["quantize", "m.onnx", "--bogus"], "error: No such option: --bogus"),
        (["quantize", "m.onnx", "--scheme", "w3a3"], "error: Invalid value for '--scheme': 'w3a3' is not one of"),
        (["bogus"], "error: No such command 'bogus'."),
    ],
)
def test_a_usage_error_is_one_plain_line_and_exit_2(monkeypatch, capsys, argv, says):
    """As qcli runs from a shell (main(), not the test runner's app()): click's boxed, wrapped message would
    be several lines in a CI log."""
    from qcli.cli.app import main

    monkeypatch.setattr("sys.argv", ["qcli", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(says) and err.count("\n") == 1, err
    assert "--help')" in err and "Value error" not in err and "╭" not in err


def test_main_passes_on_exit_codes(monkeypatch, capsys, files):
    from qcli.cli.app import main

    for argv, code in ((["--version"], 0), (["quantize", "--help"], 0), (["quantize", str(files / "nope.onnx")], 2)):
        monkeypatch.setattr("sys.argv", ["qcli", *argv])
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == code, (argv, capsys.readouterr())


def test_a_model_onnxruntime_cannot_run_on_the_data_is_one_line_without_its_log(tmp_path, monkeypatch, capfd):
    """onnxruntime logs a failed run in colour on the process's stderr before raising: only qcli's line shows."""
    from models import model_of, vi

    from qcli.cli.app import main

    w = np.ones((4, 3, 3, 3), np.float32)
    fixed = np.zeros((1, 4, 16, 16), np.float32)  # fits 18x18 inputs only
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        onnx.helper.make_node("Add", ["c", "fixed"], ["y"], name="add"),
    ]
    m = model_of(nodes, [vi("x", ["N", 3, "H", "W"])], [vi("y", ["N", 4, "H2", "W2"])], {"w": w, "fixed": fixed})
    onnx.save(m, tmp_path / "m.onnx")
    write_batches(tmp_path / "calib", [(1, 3, 20, 20)] * 2)
    monkeypatch.setattr("sys.argv", ["qcli", "quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("qcli: ")]  # progress lines aside
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: onnxruntime failed to run"), err
    assert "\x1b[" not in err and "[E:onnxruntime" not in err


def test_two_models_of_one_file_name_are_told_apart_by_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    onnx.save(cnn(), tmp_path / "a" / "model.onnx")
    other = cnn()
    other.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4  # the candidate reads 4 channels
    onnx.save(other, tmp_path / "b" / "model.onnx")
    write_batches(tmp_path / "d", [(1, 3, 16, 16)])
    r = run("compare", tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx", "--data", tmp_path / "d")
    says = " ".join(r.output.split())
    assert r.exit_code == 2 and f"({tmp_path / 'b' / 'model.onnx'} expects [N, 4, 16, 16])" in says, says


def test_compare_json_reaches_stdout_while_progress_bars_run_on_a_terminal(files, monkeypatch):
    """On a terminal the bars are live while compare measures; a live bar redirects stdout to its console, so
    `compare --json > r.json` once got an empty file (a failed gate too)."""
    import io

    from rich.console import Console

    from qcli.cli import output

    monkeypatch.setattr(output, "err", Console(file=io.StringIO(), force_terminal=True, width=100))
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    assert r.exit_code == 0, r.output
    for gate, code in (([], 0), (["--min-sqnr", "200"], 1)):
        r = runner.invoke(
            app,
            [
                str(a)
                for a in ["compare", files / "m.onnx", files / "q.onnx", "--data", files / "eval", "--json", *gate]
            ],
        )
        assert r.exit_code == code and json.loads(r.stdout)["kind"] == "compare", (r.exit_code, r.stdout[:200])


def test_labels_for_a_model_without_class_scores_are_a_note_then_a_clear_gate_error(tmp_path):
    """Labels beside the data of a model with no [N, C] output: quantize measures and writes everything, saying
    accuracy was not measured (it once failed after writing the model, leaving it without its reports);
    compare's --max-accuracy-drop says why it cannot run."""
    from models import model_of, vi

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    m = model_of(
        [onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [vi("x", ["N", 3, 16, 16])],
        [vi("y", ["N", 4, 14, 14])],
        {"w": w},
    )
    onnx.save(m, tmp_path / "m.onnx")
    write_batches(tmp_path / "calib", [(2, 3, 16, 16)] * 5)
    write_batches(tmp_path / "eval", [(2, 3, 16, 16)] * 2, seed=5)
    np.save(tmp_path / "eval" / "labels.npy", np.array([0, 1, 2, 3]))
    r = run(
        "quantize",
        tmp_path / "m.onnx",
        "--calib",
        tmp_path / "calib",
        "--eval",
        tmp_path / "eval",
        "-o",
        tmp_path / "q.onnx",
        "--json",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    said = "accuracy against labels not measured: labels were given (labels.npy or class folders), but no output"
    assert doc["accuracy"] is None and any(n.startswith(said) for n in doc["notes"]), doc["notes"]
    assert (tmp_path / "q.onnx.report.json").is_file()
    r = run(
        "compare", tmp_path / "m.onnx", tmp_path / "q.onnx", "--data", tmp_path / "eval", "--max-accuracy-drop", "1"
    )
    says = " ".join(r.output.split())
    assert r.exit_code == 2 and f"--max-accuracy-drop: {said}" in says, says


def test_per_layer_top_n_bounds_the_summary_s_highlights_too(files):
    r = run("quantize", files / "m.onnx", "--calib", files / "calib", "-o", files / "q.onnx")
    assert r.exit_code == 0, r.output
    for top, rows in ((1, 1), (2, 2), (20, 3)):
        r = run("compare", files / "m.onnx", files / "q.onnx", "--data", files / "eval", "--per-layer", "--top", top)
        assert r.exit_code == 0 and r.stdout.count("most error added") == rows, r.stdout
