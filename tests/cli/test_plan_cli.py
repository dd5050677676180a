"""`quantize --save-plan` / `--plan` on the command line: options left out of a replay are the plan's, an option
given that differs is refused (exit 2), and the replay writes the same bytes."""

from pathlib import Path

from typer.testing import CliRunner

from qcli.cli.app import app

ATTENTION = Path(__file__).parents[2] / "sample_models" / "attention"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_replay_takes_the_options_it_leaves_out_from_the_plan(tmp_path):
    model = ATTENTION / "model.onnx"
    saved = run(
        *("quantize", model, "--scheme", "w4a16", "--block-size", "64", "--calib", ATTENTION / "eval"),
        *("-o", tmp_path / "a.onnx", "--save-plan", tmp_path / "plan.json", "--no-html"),
    )
    assert saved.exit_code == 0, saved.output
    assert "plan.json" in saved.stderr
    again = run("quantize", model, "--plan", tmp_path / "plan.json", "-o", tmp_path / "b.onnx", "--no-html")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert "replayed the plan plan.json" in again.stderr

    same = run("quantize", model, "--plan", tmp_path / "plan.json", "--block-size", "64", "-o", tmp_path / "c.onnx")
    assert same.exit_code == 0, same.output  # given, and equal to the plan's: fine
    other = run("quantize", model, "--plan", tmp_path / "plan.json", "--scheme", "w8a8", "-o", tmp_path / "d.onnx")
    assert other.exit_code == 2
    assert "scheme: plan 'w4a16', this run 'w8a8'" in other.stderr and "Traceback" not in other.output
    assert not (tmp_path / "d.onnx").exists()


def test_dry_run_with_save_plan_is_refused(tmp_path):
    r = run("quantize", ATTENTION / "model.onnx", "--dry-run", "--save-plan", tmp_path / "p.json")
    assert r.exit_code == 2 and "--dry-run writes nothing" in r.stderr
