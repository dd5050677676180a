"""Weight-only timing at several batch sizes (--timing-batch, batches.py): the inputs made for each size, the
form chosen by its worst size, weight groups kept float by the worst size, and the fallbacks where a model
cannot run at a size. Timings are stand-ins where a decision is checked (tests never depend on the machine's
speed); real sessions where only what runs is checked."""

import numpy as np
import onnx
import pytest
from models import mlp, model_of, vi, write_batches
from onnx import helper
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.cli.app import app
from qcli.core.config import WeightFormat
from qcli.core.errors import InputError
from qcli.core.plan import Action
from qcli.schemes.weight_only import formats as weight_format
from qcli.schemes.weight_only import placement as weight_placement
from qcli.schemes.weight_only import timing as form_timing
from qcli.schemes.weight_only.batches import at_sizes, rows
from qcli.schemes.weight_only.planner import plan_w4a16
from qcli.schemes.weight_only.timing import Timings


def _feed(n=3, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 5, 64)).astype(np.float32)}


def test_each_size_is_the_data_rows_repeated_or_cut_along_the_first_axis():
    feed = _feed(3)
    made = at_sizes(mlp(), feed, (1, 8))
    assert made.sizes == (1, 8) and made.note == ""
    one, eight = (f["x"] for _, f in made.feeds)
    assert one.shape == (1, 5, 64) and np.array_equal(one[0], feed["x"][0])
    assert eight.shape == (8, 5, 64) and np.array_equal(eight, np.concatenate([feed["x"]] * 3)[:8])
    assert rows({"a": np.arange(4), "b": np.arange(8).reshape(4, 2)}, 2)["b"].tolist() == [[0, 1], [2, 3]]


def test_a_fixed_first_axis_or_inputs_without_a_shared_one_time_the_data_as_it_is():
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    fixed = at_sizes(m, _feed(3), (1, 8))
    assert fixed.sizes == (3,) and "the model fixes the first axis of x" in fixed.note
    two = model_of([helper.make_node("Add", ["a", "b"], ["y"])], [vi("a", ["N"]), vi("b", ["M"])], [vi("y", ["N"])], {})
    apart = at_sizes(two, {"a": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}, (1, 8))
    assert apart.sizes == (1,) and "share no first axis" in apart.note  # b's own size: what it broadcasts to


def _fid():
    """Every candidate within the margin of the exact math: the decision is the timings'."""
    from qcli.core.qparams import NoiseMeter

    def meter(db):
        m = NoiseMeter()
        m.signal, m.noise = 1.0, 10 ** (-db / 10)
        return m

    names = ("qdq", "ort-fp32", "ort-int8")
    return weight_format._Fidelity(
        {"y": meter(20.0)}, {c: {"y": meter(130.0)} for c in names}, dict.fromkeys(names, 0), rows=10
    )


def test_the_form_is_chosen_by_its_slowest_size():
    """int8 compute: 0.5x FP32 at batch 8 but 1.3x at batch 1; fp32 compute 0.95x at both: the worst size
    decides (the fastest at batch 8 alone would be slower than FP32 at batch 1)."""
    ms = {1: {"float": 10, "qdq": 14, "ort-fp32": 9.5, "ort-int8": 13}, 8: {"float": 40, "qdq": 22}}
    ms[8] |= {"ort-fp32": 38, "ort-int8": 20}
    timings = Timings({b: {k: [v / 1e3] * 5 for k, v in t.items()} for b, t in ms.items()}, 5)
    choice = weight_format._decide(weight_format.CANDIDATES, _fid(), timings)
    assert (choice.weight_format, choice.accuracy_level) == (WeightFormat.ORT, 0)
    assert choice.start() == pytest.approx({1: 0.95, 8: 0.95}) and choice.slower_than_float is None
    assert "at batch 1, 8: qdq 1.40, 0.55; ort-fp32 0.95, 0.95; ort-int8 1.30, 0.50" in choice.why
    only8 = Timings({8: timings.times[8]}, 5)
    assert weight_format._decide(weight_format.CANDIDATES, _fid(), only8).accuracy_level == 4


def test_the_sizes_asked_for_reach_the_timed_inputs(tmp_path, monkeypatch):
    seen = []

    def interleaved(sessions, feed, budget_s):
        seen.append(feed["x"].shape[0])
        return {n: [0.01] * 5 for n in sessions}, 5

    monkeypatch.setattr(form_timing, "interleaved", interleaved)
    onnx.save(mlp(k=64), tmp_path / "m.onnx")
    write_batches(tmp_path / "e", [(2, 8, 64)] * 2)
    config = QuantConfig.of(scheme="w4a16", timing_batches=(4, 2, 4))
    r = quantize(tmp_path / "m.onnx", config, None, tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)
    assert seen == [4, 2] * 3  # each form beside FP32, at 4 then 2 (a size given twice is timed once)
    assert r.plan.decisions["weight_format"]["batches"] == [4, 2]
    assert r.report.config["timing_batches"] == [4, 2]


def _pinned_to_two(n_out=10):
    """x [N, 64] -> MatMul -> Reshape to [2, 10]: the first axis is free in the signature, but only batch 2 runs."""
    w = np.random.default_rng(0).standard_normal((64, n_out)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape"),
    ]
    inits = {"W": w, "shape": np.array([2, n_out], np.int64)}
    return model_of(nodes, [vi("x", ["N", 64])], [vi("y", [2, n_out])], inits, opset=21)


def test_a_size_the_model_does_not_run_at_is_left_out_and_said(tmp_path):
    m = _pinned_to_two()
    m.ir_version = 10
    onnx.save(m, tmp_path / "f.onnx")
    feed = {"x": np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)}
    plan = plan_w4a16(m, QuantConfig.of(scheme="w4a16"))
    some = weight_format.choose(m, plan, tmp_path / "f.onnx", [feed], budget_s=0.05, timing=at_sizes(m, feed, (1, 2)))
    assert list(some.start()) == [2] and "not timed at batch 1: onnxruntime failed" in some.why
    none = weight_format.choose(m, plan, tmp_path / "f.onnx", [feed], budget_s=0.05, timing=at_sizes(m, feed, (1, 8)))
    assert list(none.start()) == [2] and "timed at the data's own batch (2) instead" in none.why


@pytest.mark.parametrize(
    "group0, group1, kept",
    [
        # the worst size 1.3 -> 1.04 (kept); then 1.04 -> 1.03: not kept, though batch 8 alone gains 20 %
        ({1: 0.8, 8: 1.1}, {1: 0.99, 8: 0.8}, [True, False]),
        # 1.3 -> 1.08, batch 8 now the worst; group1 takes batch 8 to 0.97 (kept: judged from the plan kept)
        ({1: 0.7, 8: 1.2}, {1: 1.0, 8: 0.9}, [True, True]),
    ],
)
def test_a_weight_group_is_kept_float_by_the_slowest_size(tmp_path, monkeypatch, group0, group1, kept):
    """The chosen form: 1.3x FP32 at batch 1, 0.9x at 8; each group's ratios multiply the kept plan's."""
    ms = {1: {"float": 10, "qdq": 13, "ort-fp32": 13, "ort-int8": 13}, 8: {"float": 40}}
    ms[8] |= {"qdq": 36, "ort-fp32": 36, "ort-int8": 36}
    timings = Timings({b: {k: [v / 1e3] * 5 for k, v in t.items()} for b, t in ms.items()}, 5)
    monkeypatch.setattr(weight_format, "timed", lambda *a: timings)
    by_file = {"group0.onnx": group0, "group1.onnx": group1, "m.onnx": {1: 1.0, 8: 0.95}}
    sizes = []

    def ratio_of(a, b, feed, in_turn=False, runs=None):
        sizes.append(feed["x"].shape[0])
        return by_file["m.onnx" if a.name == "m.onnx" else b.name][feed["x"].shape[0]]

    monkeypatch.setattr(weight_placement, "ratio_of", ratio_of)
    onnx.save(mlp(opset=17, k=64, hidden=128), tmp_path / "m.onnx")  # mm1: 64x128, mm2: 128x10
    write_batches(tmp_path / "e", [(2, 8, 64)] * 3, seed=7)
    r = quantize(tmp_path / "m.onnx", QuantConfig.of(scheme="w4a16"), None, tmp_path / "q.onnx", tmp_path / "e")
    timed = r.report.placement["timed"]
    assert [t["kept"] for t in timed] == kept and sizes == [1, 8] * (3 + sum(kept))  # a kept move timed twice
    worst = max(1.3 * group0[1], 0.9 * group0[8])
    assert timed[0]["ratio"] == pytest.approx(worst / 1.3, abs=1e-3)
    assert r.plan.decision("mm2").action == Action.FLOAT  # group0: the smaller weight
    assert r.plan.decision("mm1").action == (Action.FLOAT if kept[1] else Action.INT4_WEIGHT)


def test_placement_times_only_the_sizes_the_forms_ran_at(tmp_path, monkeypatch):
    """A model that runs at batch 2 only: the forms are timed there (batch 1 left out), and so is placement."""
    monkeypatch.setattr(
        form_timing, "interleaved", lambda s, f, b: ({n: [0.01 if n == "float" else 0.02] * 5 for n in s}, 5)
    )
    sizes = []

    def ratio_of(a, b, feed, in_turn=False, runs=None):
        sizes.append(feed["x"].shape[0])
        return 1.0

    monkeypatch.setattr(weight_placement, "ratio_of", ratio_of)
    onnx.save(_pinned_to_two(), tmp_path / "m.onnx")
    write_batches(tmp_path / "e", [(2, 64)] * 2)
    config = QuantConfig.of(scheme="w4a16", timing_batches=(1, 2))
    r = quantize(tmp_path / "m.onnx", config, None, tmp_path / "q.onnx", tmp_path / "e", latency_runs=1)
    assert "not timed at batch 1" in r.plan.decisions["weight_format"]["why"]
    assert sizes == [2, 2] and r.plan.decisions["weight_format"]["batches"] == [2]  # one group, then vs FP32


def test_a_move_to_float_the_second_timing_does_not_repeat_is_not_kept(tmp_path, monkeypatch):
    """Both groups look 20% faster float in a first timing; over CONFIRM_RUNS runs they are level: every weight
    stays quantized (a float weight costs size, and one short timing of a small model is mostly noise)."""
    _slow_forms(monkeypatch)
    asked = []

    def ratio_of(a, b, feed, in_turn=False, runs=None):
        asked.append(runs)
        return 1.0 if a.name == "m.onnx" or runs else 0.8

    monkeypatch.setattr(weight_placement, "ratio_of", ratio_of)
    onnx.save(mlp(opset=17, k=64, hidden=128), tmp_path / "m.onnx")
    write_batches(tmp_path / "e", [(2, 8, 64)] * 3, seed=7)
    r = quantize(tmp_path / "m.onnx", QuantConfig.of(scheme="w4a16"), None, tmp_path / "q.onnx", tmp_path / "e")
    assert [t["kept"] for t in r.report.placement["timed"]] == [False, False] and len(r.plan.weights) == 2
    confirm = weight_placement.CONFIRM_RUNS
    assert asked == [None, None, confirm, confirm] * 2 + [None, None]  # each group twice, then the plan vs FP32


def _slow_forms(monkeypatch):
    """--format auto's stand-in timings: every form 1.3x FP32 at batch 1, 0.75x at batch 8."""
    ms = {1: {"float": 10, "qdq": 13, "ort-fp32": 13, "ort-int8": 13}, 8: {"float": 40}}
    ms[8] |= {"qdq": 30, "ort-fp32": 30, "ort-int8": 30}
    timings = Timings({b: {k: [v / 1e3] * 5 for k, v in t.items()} for b, t in ms.items()}, 5)
    monkeypatch.setattr(weight_format, "timed", lambda *a: timings)


def _placed(tmp_path, monkeypatch, vs_fp32: dict[int, float], confirmed: dict[int, float]):
    """Groups timed level (1.0); the best plan against FP32 at vs_fp32 per size, at `confirmed` when timed
    again over more runs. Returns the result and the runs asked of each confirmation."""
    asked = []

    def ratio_of(a, b, feed, in_turn=False, runs=None):
        n = feed["x"].shape[0]
        if a.name != "m.onnx":
            return 1.0
        if runs:
            asked.append((n, runs))
        return confirmed[n] if runs else vs_fp32[n]

    _slow_forms(monkeypatch)
    monkeypatch.setattr(weight_placement, "ratio_of", ratio_of)
    onnx.save(mlp(opset=17, k=64, hidden=128), tmp_path / "m.onnx")
    write_batches(tmp_path / "e", [(2, 8, 64)] * 3, seed=7)
    r = quantize(tmp_path / "m.onnx", QuantConfig.of(scheme="w4a16"), None, tmp_path / "q.onnx", tmp_path / "e")
    return r, asked


def test_clearly_slower_at_one_size_and_confirmed_writes_the_weights_float_and_names_the_size(tmp_path, monkeypatch):
    r, asked = _placed(tmp_path, monkeypatch, {1: 1.2, 8: 0.7}, confirmed={1: 1.15})
    assert asked == [(1, weight_placement.CONFIRM_RUNS)] and r.plan.weights == []
    assert any("(best 1.15x at batch 1, confirmed over 60 runs)" in w for w in r.report.warnings), r.report.warnings


def test_a_slowdown_the_confirmation_does_not_repeat_keeps_the_weights_quantized(tmp_path, monkeypatch):
    r, asked = _placed(tmp_path, monkeypatch, {1: 1.2, 8: 0.7}, confirmed={1: 1.02})
    assert asked == [(1, weight_placement.CONFIRM_RUNS)] and len(r.plan.weights) == 2
    assert not any("faster than FP32" in w for w in r.report.warnings)


def test_level_within_one_timings_spread_keeps_the_weights_quantized_and_says_so(tmp_path, monkeypatch):
    """1.05x FP32 at batch 8 (under CLEAR, 9 %), 0.86x at batch 1: not confirmed, kept, named in a line."""
    r, asked = _placed(tmp_path, monkeypatch, {1: 0.86, 8: 1.05}, confirmed={})
    assert asked == [] and len(r.plan.weights) == 2 and r.report.placement["vs_fp32"] == 1.05
    line = "weight-only: 1.05x FP32 at batch 8 on this CPU, within the 9% one timing spreads (0.86x at batch 1, "
    assert any(w.startswith(line) for w in r.report.warnings), r.report.warnings


@pytest.mark.parametrize("sizes", [(), (0,), (1, 2, 3, 4, 5), (8192,)])
def test_timing_sizes_out_of_range_are_refused(sizes):
    with pytest.raises(InputError, match="--timing-batch takes 1 to 4 batch sizes"):
        QuantConfig.of(scheme="w4a16", timing_batches=sizes)


def test_cli_timing_batch_is_repeatable_checked_and_flagged_where_ignored(tmp_path):
    onnx.save(mlp(k=64), tmp_path / "m.onnx")
    out = ["-o", str(tmp_path / "q.onnx"), "--dry-run"]
    bad = CliRunner().invoke(app, ["quantize", str(tmp_path / "m.onnx"), "--scheme", "w4a16", "--timing-batch", "0"])
    assert bad.exit_code == 2 and "--timing-batch takes 1 to 4" in bad.output
    args = ["quantize", str(tmp_path / "m.onnx"), "--scheme", "dynamic", "--timing-batch", "4", *out]
    dynamic = CliRunner().invoke(app, args)
    assert dynamic.exit_code == 0 and "--timing-batch does not apply to --scheme dynamic" in dynamic.output
