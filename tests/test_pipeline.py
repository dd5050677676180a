"""quantize() options that are not planner-specific, each checked by its effect: which files calibrate, which
measure fidelity (recomputed here from onnxruntime outputs), what is written and with which permissions,
the effective configuration, warnings for silent no-ops, validation, interruption, models too new."""

import json
import os

import numpy as np
import onnx
import pytest
from checks import run, sqnr_on
from models import cnn, mlp
from onnx import TensorProto
from typer.testing import CliRunner

import qcli.pipeline
import qcli.schemes.w8a8.handler
from qcli import QuantConfig, Scheme, quantize
from qcli.cli.app import app
from qcli.core.errors import InputError, Interrupted
from qcli.core.plan import Action, Why

runner = CliRunner()
OUTLIER = 50.0  # far beyond a standard normal's range


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_calib(folder, n, outlier_at=None, prefix="b", seed=1):
    """n single-input batches [2, 3, 16, 16] named <prefix>00.npy...; file `outlier_at` gets one OUTLIER."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
        if i == outlier_at:
            a[0, 1, 5, 7] = OUTLIER
        np.save(folder / f"{prefix}{i:02d}.npy", a)
    return folder


def feeds(folder, names):
    return [{"x": np.load(folder / n)} for n in names]


def x_range(folder, names):
    data = np.concatenate([np.load(folder / n).ravel() for n in names])
    return float(data.min()), float(data.max())


@pytest.fixture
def model(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


def q(model_path, config=None, **kw):
    kw.setdefault("out", model_path.parent / "out" / "q.onnx")
    return quantize(model_path, config or QuantConfig(), latency_runs=2, **kw)


# ---------------------------------------------------------------- which files calibrate, which measure


def test_calib_limit_uses_exactly_n_files_spread_evenly(model, tmp_path):
    """calib_limit=3 of 6 files takes files 0, 2 and 5 (evenly spread, in order). File 4 carries an outlier:
    with the limit it never reaches the ranges (nor x's scale), without the limit it does (file 5 is then held
    aside to measure the decisions, and added to the final ranges)."""
    c = write_calib(tmp_path / "calib", 6, outlier_at=4)
    limited = q(model, QuantConfig.of(calib_limit=3), calib=c).report
    first3 = ["b00.npy", "b02.npy", "b05.npy"]
    assert limited.calibration["files"] == first3 and limited.calibration["batches"] == 3
    lo, hi = x_range(c, first3)
    assert (limited.calibration["ranges"]["x"]["min"], limited.calibration["ranges"]["x"]["max"]) == (lo, hi)
    assert hi < 6
    # fewer than 5 files left: fidelity is measured on those same 3 files, not on the ones left out
    assert limited.fidelity_files == first3

    full = q(model, calib=c)
    assert full.report.calibration["files"] == [f"b{i:02d}.npy" for i in range(6)]
    assert full.report.calibration["ranges"]["x"]["max"] == OUTLIER
    # the effect on the plan: x's scale spans the outlier only without the limit
    limited_plan = q(model, QuantConfig.of(calib_limit=3), calib=c, dry_run=True).plan
    assert limited_plan.activations["x"].scale == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert full.plan.activations["x"].scale > (OUTLIER - lo) / 255 * 0.99


def test_held_aside_files_measure_the_decisions_then_join_the_ranges_where_that_measures_no_worse(model, tmp_path):
    """6 files, no eval_dir: the last one is held aside. The decisions are measured with ranges from the other
    five; the refit adds it to the ranges, and the step measures both models on it: the one written is the
    refitted one unless it measures worse, and the report's fidelity is exactly onnxruntime's on the held file
    with the model written, the figure the check measured."""
    c = write_calib(tmp_path / "calib", 6, seed=4)
    np.save(c / "b05.npy", np.load(c / "b05.npy") * 1.6)  # past the others' range: the decided ranges clip it
    r = q(model, calib=c)
    rep, v = r.report, r.report.verified
    everything = [f"b{i:02d}.npy" for i in range(6)]
    assert rep.fidelity_files == ["b05.npy"] and v["on"] == "1 calibration file(s) held aside"
    assert v["refit"]["mean_file_worst_sqnr_db"] > v["decided"]["mean_file_worst_sqnr_db"] + 1
    assert v["written"] == "refit"
    assert rep.calibration["decided_with"] == {"batches": 5, "measured_on": ["b05.npy"], "and_fitted": []}
    assert rep.calibration["files"] == everything
    assert (rep.calibration["ranges"]["x"]["min"], rep.calibration["ranges"]["x"]["max"]) == x_range(c, everything)
    assert "then added to the ranges" in rep.fidelity_data
    assert any("ranges from all 6 calibration files" in n for n in rep.notes)
    assert rep.fidelity[0].sqnr_db == pytest.approx(sqnr_on(model, r.output, feeds(c, ["b05.npy"])), rel=1e-9)
    assert round(rep.fidelity[0].sqnr_db, 2) == v["refit"]["worst_sqnr_db"]


def test_a_refit_that_measures_worse_on_the_held_files_is_undone(model, tmp_path):
    """25 files, the last 5 held aside; the middle one of those is at 50x the others' scale. With it in the
    ranges every value loses resolution, and the held files measure worse (mean dB) than with the ranges the
    decisions saw. The decided model is written (ranges from the first 12 files), its fidelity stays a figure on
    unseen data, both measurements are in the report, and the file is named as at another scale."""
    c = write_calib(tmp_path / "calib", 25)
    np.save(c / "b22.npy", np.load(c / "b22.npy") * 50)
    r = q(model, calib=c)
    rep, v = r.report, r.report.verified
    decided_files = [f"b{i:02d}.npy" for i in range(20)]
    assert v["written"] == "decided"
    assert v["refit"]["mean_file_worst_sqnr_db"] < v["decided"]["mean_file_worst_sqnr_db"] - 3
    assert rep.calibration["files"] == decided_files and rep.fidelity_files == [f"b{i}.npy" for i in range(20, 25)]
    assert r.plan.activations["x"].range == x_range(c, decided_files)
    assert "added to the ranges" not in rep.fidelity_data
    assert any(w.startswith("range refit undone: with the 5 held-aside file(s) added") for w in rep.warnings)
    held = feeds(c, rep.fidelity_files)
    assert rep.fidelity[0].sqnr_db == pytest.approx(sqnr_on(model, r.output, held), rel=1e-9)
    assert round(rep.fidelity[0].sqnr_db, 2) == v["decided"]["worst_sqnr_db"]
    assert any("at another scale than the rest: b22.npy (x reaches" in w for w in rep.warnings)


def test_under_an_accuracy_target_held_aside_files_stay_out_of_calibration(model, tmp_path):
    """With --min-sqnr the model written is the one the target was verified on, on a file its ranges never saw:
    the held file's outlier must not reach the ranges, and the fidelity is exactly onnxruntime's on that file."""
    c = write_calib(tmp_path / "calib", 5, outlier_at=4)
    r = q(model, QuantConfig.of(min_sqnr=5.0), calib=c)
    rep = r.report
    calib_files = ["b00.npy", "b01.npy", "b02.npy", "b03.npy"]
    assert rep.calibration["files"] == calib_files and rep.fidelity_files == ["b04.npy"]
    assert "decided_with" not in rep.calibration and "added to the ranges" not in rep.fidelity_data
    assert (rep.calibration["ranges"]["x"]["min"], rep.calibration["ranges"]["x"]["max"]) == x_range(c, calib_files)
    assert rep.calibration["ranges"]["x"]["max"] < 6

    held = sqnr_on(model, r.output, feeds(c, ["b04.npy"]))
    on_calib = sqnr_on(model, r.output, feeds(c, calib_files))
    assert rep.fidelity[0].sqnr_db == pytest.approx(held, rel=1e-9)
    assert abs(held - on_calib) > 1  # the two data sets are distinguishable (measured: the outlier costs dB)


def test_fewer_than_five_files_measure_on_the_calibration_files(model, tmp_path):
    c = write_calib(tmp_path / "calib", 4, outlier_at=3)
    r = q(model, calib=c)
    rep = r.report
    everything = [f"b{i:02d}.npy" for i in range(4)]
    assert rep.calibration["files"] == everything and rep.fidelity_files == everything
    assert rep.calibration["ranges"]["x"]["max"] == OUTLIER  # every file calibrates
    assert "calibration file" in rep.fidelity_data and "none held aside" in rep.fidelity_data
    assert rep.fidelity[0].sqnr_db == pytest.approx(sqnr_on(model, r.output, feeds(c, everything)), rel=1e-9)


def test_eval_dir_measures_fidelity_and_the_decisions_are_measured_on_held_calibration_files(model, tmp_path):
    c = write_calib(tmp_path / "calib", 6, outlier_at=5)
    e = write_calib(tmp_path / "eval", 3, prefix="e", seed=7)
    r = q(model, calib=c, eval_dir=e)
    rep = r.report
    assert rep.calibration["files"] == [f"b{i:02d}.npy" for i in range(6)] and rep.calibration["batches"] == 6
    # The last file is held aside to measure the decisions on (never --eval's files), then joins the ranges: with
    # its outlier in them it measures better
    assert rep.calibration["decided_with"] == {"batches": 5, "measured_on": ["b05.npy"], "and_fitted": []}
    assert rep.verified["on"].startswith("1 calibration file(s) held aside") and rep.verified["written"] == "refit"
    assert rep.calibration["ranges"]["x"]["max"] == OUTLIER
    assert rep.fidelity_files == ["e00.npy", "e01.npy", "e02.npy"]
    on_eval = sqnr_on(model, r.output, feeds(e, rep.fidelity_files))
    assert rep.fidelity[0].sqnr_db == pytest.approx(on_eval, rel=1e-9)
    assert abs(on_eval - sqnr_on(model, r.output, feeds(c, ["b05.npy"]))) > 0.1


# ---------------------------------------------------------------- what is written


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o666 & ~0o027
    os.umask(old)


def test_report_files_and_their_permissions(model, tmp_path, umask_027):
    c = write_calib(tmp_path / "calib", 5)
    out = tmp_path / "out" / "q.onnx"
    r = q(model, calib=c, out=out)
    j, md = tmp_path / "out" / "q.onnx.report.json", tmp_path / "out" / "q.onnx.report.md"
    html = tmp_path / "out" / "q.onnx.report.html"
    assert r.output == out and r.written == [out, j, md, html]
    names = ["q.onnx", "q.onnx.report.html", "q.onnx.report.json", "q.onnx.report.md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    on_disk = json.loads(j.read_text())
    assert on_disk == json.loads(r.report.to_json())
    for key in ("kind", "config", "decisions", "calibration", "size", "fidelity_files", "gates", "warnings"):
        assert on_disk[key] == json.loads(json.dumps(r.report.to_dict()[key])), key
    assert on_disk["outputs"][0]["sqnr_db"] == r.report.fidelity[0].sqnr_db
    assert md.read_text().startswith("# qcli quantize report")

    ordinary = tmp_path / "out" / "ordinary.txt"
    with open(ordinary, "w") as f:
        f.write("x")
    assert ordinary.stat().st_mode & 0o777 == umask_027
    for p in (out, j, md, html):
        assert p.stat().st_mode & 0o777 == umask_027, p.name


def test_write_report_false_writes_only_the_model(model, tmp_path):
    c = write_calib(tmp_path / "calib", 5)
    r = q(model, calib=c, write_report=False)
    assert r.written == [r.output] and [p.name for p in r.output.parent.iterdir()] == ["q.onnx"]
    run(r.output, feeds(c, ["b00.npy"])[0])


def test_dry_run_writes_nothing(model, tmp_path):
    c = write_calib(tmp_path / "calib", 5)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = q(model, calib=c, dry_run=True)
    assert r.output is None and r.written == []
    assert r.plan.by_action(Action.INT8)  # a real plan was made
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------- the effective configuration


def int8_weight_extremes(path):
    m = onnx.load(str(path))
    vals = [onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == TensorProto.INT8]
    return min(int(v.min()) for v in vals), max(int(v.max()) for v in vals)


def test_reduce_range_follows_the_cpu(model, tmp_path, cpu_kind):
    """Auto reduce_range: a bool in the effective config (7-bit on AVX2, 8-bit with VNNI), the why names the
    CPU, and the written weights use 7 or 8 bits accordingly."""
    kind, cpu = cpu_kind
    c = write_calib(tmp_path / "calib", 5)
    r = q(model, calib=c)
    rep = r.report
    expected = kind == "avx2"
    assert rep.config["reduce_range"] is expected
    why = rep.decisions["reduce_range"]["why"]
    assert rep.decisions["reduce_range"]["value"] is expected and "auto" in why and cpu.model in why
    assert {w.qtype for w in r.plan.weights if w.role == "weight"} == {"int8-7bit" if expected else "int8"}
    lo, hi = int8_weight_extremes(r.output)
    if expected:
        assert lo >= -64 and hi <= 63
    else:
        assert max(-lo, hi) == 127  # symmetric: each channel's extreme maps to +-127

    forced = q(model, QuantConfig.of(reduce_range=not expected), calib=c, dry_run=True).report
    assert forced.config["reduce_range"] is (not expected)
    assert forced.decisions["reduce_range"]["why"] == ("--no-reduce-range" if expected else "--reduce-range")


W8A8_ONLY = (
    "per_channel",
    "activation_symmetric",
    "reduce_range",
    "calibrator",
    "calib_limit",
    "min_macs_per_conversion",
    "min_activation_sqnr",
)
W4A16_ONLY = ("block_size", "weight_symmetric_int4")


def test_effective_config_has_only_the_schemes_keys(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    w4 = q(tmp_path / "mlp.onnx", QuantConfig.of(scheme=Scheme.W4A16), dry_run=True).report
    assert not set(W8A8_ONLY) & set(w4.config) and set(W4A16_ONLY) <= set(w4.config)
    assert "reduce_range" not in w4.decisions
    c = write_calib(tmp_path / "calib", 2)
    onnx.save(cnn(), tmp_path / "m.onnx")
    w8 = q(tmp_path / "m.onnx", calib=c, dry_run=True).report
    assert set(W8A8_ONLY) <= set(w8.config) and not set(W4A16_ONLY) & set(w8.config)
    assert isinstance(w8.config["reduce_range"], bool)


# ---------------------------------------------------------------- warnings for silent no-ops


def test_exclude_matching_nothing_warns(model, tmp_path):
    c = write_calib(tmp_path / "calib", 2)
    r = q(model, QuantConfig.of(exclude=("no_such_node", "conv3")), calib=c, dry_run=True)
    assert len(r.report.warnings) == 1 and "'no_such_node'" in r.report.warnings[0]
    d = r.plan.decision("conv3")
    assert d.action == Action.FLOAT and d.why == Why.EXCLUDED  # the pattern that matched had its effect
    globbed = q(model, QuantConfig.of(exclude=("conv3*",)), calib=c, dry_run=True)
    assert not [w for w in globbed.report.warnings if "--exclude" in w]
    assert globbed.plan.decision("conv3").why == Why.EXCLUDED


def plan_actions(plan):
    return [(d.node, d.action) for d in plan.nodes]


def test_option_of_the_other_scheme_warns_and_changes_nothing(model, tmp_path):
    c = write_calib(tmp_path / "calib", 2)
    default = q(model, calib=c, dry_run=True)
    assert default.report.warnings == []
    r = q(model, QuantConfig.of(block_size=64), calib=c, dry_run=True)
    assert len(r.report.warnings) == 1 and "--block-size" in r.report.warnings[0]
    assert plan_actions(r.plan) == plan_actions(default.plan) and r.plan.weights == default.plan.weights

    onnx.save(mlp(), tmp_path / "mlp.onnx")
    w4 = q(tmp_path / "mlp.onnx", QuantConfig.of(scheme=Scheme.W4A16), dry_run=True)
    r = q(tmp_path / "mlp.onnx", QuantConfig.of(scheme=Scheme.W4A16, per_channel=False), dry_run=True)
    assert len(r.report.warnings) == 1 and "--per-tensor" in r.report.warnings[0]
    assert plan_actions(r.plan) == plan_actions(w4.plan) and r.plan.weights == w4.plan.weights


def test_w4a16_block_larger_than_every_weight_quantizes_nothing_and_says_so(tmp_path):
    """mlp's weights reduce over 64 and 128: a 256 block fits none. Nothing is quantized (no int4 tensor in the
    output), a note says so, and through the CLI the exit code stays 0 but the line is printed."""
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    r = q(tmp_path / "mlp.onnx", QuantConfig.of(scheme=Scheme.W4A16, block_size=256))
    assert r.plan.weights == [] and not r.plan.by_action(Action.INT4_WEIGHT)
    out = onnx.load(str(r.output))
    assert not [t for t in out.graph.initializer if t.data_type in (TensorProto.INT4, TensorProto.UINT4)]
    said = [n for n in r.report.notes + r.report.warnings if "nothing was quantized" in n]
    assert len(said) == 1 and "256" in said[0]
    # a block that fits quantizes both weights
    assert (
        len(q(tmp_path / "mlp.onnx", QuantConfig.of(scheme=Scheme.W4A16, block_size=64), dry_run=True).plan.weights)
        == 2
    )

    res = cli("quantize", tmp_path / "mlp.onnx", "--scheme", "w4a16", "--block-size", 256, "-o", tmp_path / "c.onnx")
    assert res.exit_code == 0, res.output
    assert "nothing was quantized" in res.stderr


# ---------------------------------------------------------------- validation


BAD_CONFIGS = {
    "block 48": ({"block_size": 48}, ["--scheme", "w4a16", "--block-size", "48"]),
    "block 8": ({"block_size": 8}, ["--scheme", "w4a16", "--block-size", "8"]),
    "block 512": ({"block_size": 512}, ["--scheme", "w4a16", "--block-size", "512"]),
    "calib limit 0": ({"calib_limit": 0}, ["--calib-limit", "0"]),
    "min macs -1": ({"min_macs_per_conversion": -1}, ["--min-macs", "-1"]),
    "empty exclude": ({"exclude": ("",)}, ["--exclude", ""]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_config_is_refused_by_api_and_cli(model, tmp_path, case):
    kwargs, flags = BAD_CONFIGS[case]
    with pytest.raises(InputError):
        QuantConfig.of(**kwargs)
    c = write_calib(tmp_path / "calib", 2)
    res = cli("quantize", model, "--calib", c, "-o", tmp_path / "out" / "q.onnx", *flags)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- interruption


def interrupt(*a, **k):
    raise KeyboardInterrupt


def test_interrupt_after_the_save_keeps_the_model(model, tmp_path, monkeypatch):
    c = write_calib(tmp_path / "calib", 5)
    monkeypatch.setattr(qcli.pipeline, "measure", interrupt)
    out = tmp_path / "out" / "q.onnx"
    with pytest.raises(KeyboardInterrupt) as e:  # caught as its base class: a bare Ctrl-C fails here, cleanly
        q(model, calib=c, out=out)
    assert isinstance(e.value, Interrupted) and e.value.written == [out]
    assert [p.name for p in out.parent.iterdir()] == ["q.onnx"]  # no report, no temp files
    (y,) = run(out, feeds(c, ["b00.npy"])[0])
    assert y.shape == (2, 10)

    out.unlink()
    res = cli("quantize", model, "--calib", c, "-o", out)
    assert res.exit_code == 130
    assert str(out) in res.stderr and "written" in res.stderr and "nothing was written" not in res.stderr
    assert out.exists()


def test_interrupt_before_the_save_leaves_nothing(model, tmp_path, monkeypatch):
    c = write_calib(tmp_path / "calib", 5)
    monkeypatch.setattr(qcli.schemes.w8a8.handler, "apply_unscaled", interrupt)
    out = tmp_path / "out" / "q.onnx"
    with pytest.raises(KeyboardInterrupt) as e:
        q(model, calib=c, out=out)
    assert isinstance(e.value, Interrupted) and e.value.written == []
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
    res = cli("quantize", model, "--calib", c, "-o", out)
    assert res.exit_code == 130 and "nothing was written" in res.stderr
    assert not out.exists()


# ---------------------------------------------------------------- models newer than onnxruntime


def too_new_ir(m):
    m.ir_version = 99
    return m


def too_new_opset(m):
    m.opset_import[0].version = 99
    return m


@pytest.mark.parametrize("make,said", [(too_new_ir, "IR version 99"), (too_new_opset, "opset 99")], ids=["ir", "opset"])
def test_model_newer_than_onnxruntime_is_an_input_error(tmp_path, make, said):
    onnx.save(make(cnn()), tmp_path / "new.onnx")
    c = write_calib(tmp_path / "calib", 2)
    out = tmp_path / "out" / "q.onnx"
    with pytest.raises(InputError, match=said):
        quantize(tmp_path / "new.onnx", QuantConfig(), calib=c, out=out, latency_runs=2)
    assert not (tmp_path / "out").exists()
    res = cli("quantize", tmp_path / "new.onnx", "--calib", c, "-o", out)
    assert res.exit_code == 2 and said in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
