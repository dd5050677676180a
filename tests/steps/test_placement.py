"""Measured placement (placement.py): the groups the static rule is unsure about are timed back to float and
kept float when faster; a plan not faster than FP32 falls back, down to no int8 compute, and says so. Timing
is replaced by a stand-in cost model here (tests never depend on the machine's speed): each test states which
plans are faster and checks what was chosen, in the plan and in the written model."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from checks import batches_of, fused_ops, ops, sqnr_on
from models import model_of, save_with_data, vi
from onnx import helper
from typer.testing import CliRunner

from qcli import QuantConfig, quantize
from qcli.cli.app import app
from qcli.core.plan import Action, Why
from qcli.io import session
from qcli.measure import evaluate
from qcli.report.render import render_markdown
from qcli.steps import placement as P
from qcli.steps import timing as T

pytestmark = pytest.mark.timed_placement
BASE = {"reduce_range": False, "accuracy_guard": False}


def _silu_net():
    """x [N,16,12,12] -> (Conv -> Sigmoid, Mul: SiLU) x 2 -> Conv: the SiLU ops are int8 in the static plan."""
    rng = np.random.default_rng(2)
    w = {f"w{i}": (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32) for i in range(1, 4)}
    nodes, t = [], "x"
    for i in (1, 2):
        nodes += [
            helper.make_node("Conv", [t, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
            helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"h{i}"], name=f"mul{i}"),
        ]
        t = f"h{i}"
    nodes.append(helper.make_node("Conv", [t, "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1]))
    return model_of(nodes, [vi("x", ["N", 16, 12, 12])], [vi("y", ["N", 16, 12, 12])], w)


COST = {"Conv": -4.0, "elementwise": 1.5, "QuantizeLinear": 0.0, "Softmax": -2.0}
NODE_COST: dict[str, float] = {}  # Conv name -> its cost on int8, where it is not COST["Conv"]


def _cost(path) -> float:
    """Stand-in latency, counted the way onnxruntime fuses: the float model 20; each Conv reading a
    DequantizeLinear output adds COST["Conv"] (int8 convs save time), each Sigmoid or Mul whose inputs are all
    DequantizeLinear outputs and whose output feeds a QuantizeLinear (a QLinear kernel) adds
    COST["elementwise"] (slower than float on this imaginary CPU), a Softmax read and written that way
    COST["Softmax"], each QuantizeLinear COST["QuantizeLinear"]."""
    m = onnx.load(str(path), load_external_data=False)
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    to_q = {i for n in m.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    total = 20.0
    for n in m.graph.node:
        if n.op_type == "Conv" and n.input[0] in dq:
            total += NODE_COST.get(n.name, COST["Conv"])
        if n.op_type in ("Sigmoid", "Mul", "Softmax") and all(i in dq for i in n.input) and n.output[0] in to_q:
            total += COST["Softmax" if n.op_type == "Softmax" else "elementwise"]
        total += COST["QuantizeLinear"] if n.op_type == "QuantizeLinear" else 0.0
    return total


@pytest.fixture
def timer(monkeypatch):
    calls = []

    def ratio_of(a, b, feed, in_turn=False):
        a, b = getattr(a, "path", a), getattr(b, "path", b)  # files, or sessions open over them
        calls.append((a.name, b.name, in_turn))
        return _cost(b) / _cost(a)

    monkeypatch.setattr(P, "ratio_of", ratio_of)
    return calls


def _q(tmp_path, **kw):
    return quantize(
        tmp_path / "m.onnx", QuantConfig.of(**{**BASE, **kw}), tmp_path / "c", tmp_path / "q.onnx", latency_runs=1
    )


SILU = ("sig1", "mul1", "sig2", "mul2")


def test_a_group_timed_faster_float_is_kept_float_and_the_rest_stays_int8(tmp_path, timer):
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    r = _q(tmp_path)
    assert _cost(tmp_path / "q.onnx") == 8  # the written model is the one chosen (below)
    static = _q(tmp_path, placement="static")
    assert [static.plan.decision(n).action for n in SILU] == [Action.INT8] * 4
    for n in SILU:
        d = r.plan.decision(n)
        assert d.action == Action.FLOAT and d.why == Why.MEASURED and "elementwise ops (4)" in d.reason.text
    assert all(r.plan.decision(f"conv{i}").action != Action.FLOAT for i in (1, 2, 3))
    timed = r.report.placement["timed"]
    # The whole group float paid: its parts (by type) are float already, and are not timed again.
    assert [t["group"] for t in timed][1:] == ["int8 elementwise ops (4)"]
    assert [t["kept"] for t in timed] == [False, True]
    assert timed[1]["ratio"] == pytest.approx(8 / 14, abs=1e-3)  # three int8 convs, no int8 SiLU: 8 against 14
    assert r.report.placement["vs_fp32"] == pytest.approx(8 / 20, abs=1e-3)
    assert "ran 0.57x the time" in r.plan.decision("mul1").reason.text
    assert set(SILU) <= set(r.report.float_for_speed)


def test_a_group_not_faster_float_stays_int8(tmp_path, timer, monkeypatch):
    monkeypatch.setitem(COST, "elementwise", -0.1)  # int8 SiLU a little faster than float
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    r = _q(tmp_path)
    assert r.plan.decision("sig1").action == Action.INT8 and not r.plan.by_reason(Why.MEASURED)
    assert not any(t["kept"] for t in r.report.placement["timed"]) and len(timer) == 4 + 1  # groups, FP32


def test_no_placement_faster_than_fp32_writes_no_int8_compute_and_says_so(tmp_path, timer, monkeypatch):
    monkeypatch.setitem(COST, "QuantizeLinear", 10.0)  # any conversion costs more than int8 wins
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    r = _q(tmp_path)
    assert not r.plan.by_action(Action.INT8, Action.INT8_OUT_FLOAT)
    assert any("faster than FP32 on this CPU" in w for w in r.report.warnings)
    assert ops(tmp_path / "q.onnx").get("QuantizeLinear", 0) == 0
    size = _q(tmp_path, objective="size")
    assert size.report.placement is None and size.plan.decision("conv1").action == Action.INT8


def test_fallback_keeps_int8_only_the_heavy_layers(tmp_path, timer, monkeypatch):
    """Int8 as planned is slower than FP32 and no group helps; float below HEAVY x the threshold is faster."""
    monkeypatch.setattr(P, "MAX_GROUPS", 0)
    monkeypatch.setitem(COST, "elementwise", 10.0)
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    r = _q(tmp_path)
    last = r.report.placement["timed"][-1]
    assert last["group"].startswith("fallback") and last["kept"] and r.report.placement["vs_fp32"] < 1
    assert r.plan.decision("mul1").action == Action.FLOAT and r.plan.decision("mul1").why == Why.MEASURED


def test_objective_size_quantizes_what_the_cost_rule_would_keep_float(tmp_path, timer):
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    latency = _q(tmp_path, min_macs_per_conversion=1e6, placement="static")
    assert latency.plan.decision("conv1").why == Why.SPEED
    size = _q(tmp_path, min_macs_per_conversion=1e6, objective="size")
    assert size.plan.decision("conv1").action != Action.FLOAT and not size.plan.by_reason(Why.SPEED)
    assert size.report.size["ratio"] < latency.report.size["ratio"]
    assert timer == []  # neither was timed


def test_static_placement_is_not_timed_and_the_cli_takes_both_switches(tmp_path, timer):
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    args = ["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c"), "-o", str(tmp_path / "q.onnx")]
    res = CliRunner().invoke(app, args + ["--placement", "static", "--no-guard", "--json"])
    assert res.exit_code == 0 and timer == []
    res = CliRunner().invoke(app, args + ["--objective", "fastest"])
    assert res.exit_code == 2 and "fastest" in res.output


def test_a_pair_that_would_break_the_memory_bound_is_timed_one_model_after_the_other(tmp_path, timer, monkeypatch):
    """Beside the float graph the caller holds, two sessions of a large model can exceed 2x its size + 500 MB:
    those timings are made in turn (one session at a time), and the report counts them."""
    save_with_data(tmp_path, _silu_net(), (2, 16, 12, 12), n_calib=5)
    r = _q(tmp_path)
    assert r.report.placement["timed_in_turn"] == 0 and not any(t[2] for t in timer)  # small: interleaved
    timer.clear()
    monkeypatch.setattr(T, "BOUND_PLUS", -T.RESIDENT)  # no room beyond twice the model: nothing fits with it
    r2 = _q(tmp_path)
    assert r2.report.placement["timed_in_turn"] == len(timer) == 3 and all(t[2] for t in timer)
    assert r2.plan.to_dict()["nodes"] == r.plan.to_dict()["nodes"]  # same timings, same plan


def test_fits_together_counts_the_graph_held_and_both_files_against_the_bound(tmp_path):
    for name, size in (("ref", 1000), ("a", 300), ("b", 200)):
        (tmp_path / f"{name}.onnx").write_bytes(b"x" * size)
    ref, a, b = (tmp_path / f"{n}.onnx" for n in ("ref", "a", "b"))
    room = T.BOUND_TIMES * 1000 + T.BOUND_PLUS - T.RESIDENT - 500  # what the graph held may take
    assert T.fits_together(room, a, b, ref) and not T.fits_together(room + 1, a, b, ref)


@pytest.mark.parametrize(
    ("ratios", "want", "calls"),
    [
        ([0.80], 0.80, [(T.FIRST_RUNS, T.WARMUP)]),  # clearly faster: decided on the first look
        ([1.20], 1.20, [(T.FIRST_RUNS, T.WARMUP)]),  # clearly slower
        ([0.95, 0.98], 0.98, [(T.FIRST_RUNS, T.WARMUP), (T.RUNS, 0)]),  # close: timed again, that one counts
        ([1.05, 0.96], 0.96, [(T.FIRST_RUNS, T.WARMUP), (T.RUNS, 0)]),
    ],
)
def test_timing_settles_clear_differences_on_a_first_look(monkeypatch, ratios, want, calls):
    """ratio_of's two stages, with a stand-in for the timer (no test depends on the machine's speed): both
    stages run on the same pair of sessions, opened once."""
    import contextlib

    from qcli.measure import evaluate

    seen, opened = [], []

    @contextlib.contextmanager
    def pair(a, b, candidate_ours=False):
        opened.append((a, b))
        yield "A", "B"

    def latency(a, b, feed, runs, warmup, min_s=0.0):
        assert (a, b) == ("A", "B")
        seen.append((runs, warmup) if not min_s else (runs, warmup, min_s))
        return evaluate.Latency(10.0, 10.0 * ratios[(len(seen) - 1) % len(ratios)], runs)

    monkeypatch.setattr(evaluate, "pair", pair)
    monkeypatch.setattr(evaluate, "latency", latency)
    assert T.ratio_of("a.onnx", "b.onnx", {}) == pytest.approx(want)
    assert seen == calls and opened == [("a.onnx", "b.onnx")]
    seen.clear()
    T.ratio_of("a.onnx", "b.onnx", {}, runs=60)  # a confirmation: one long timing, no first look
    assert seen == [(60, T.WARMUP, T.CONFIRM_S)]


# -- the other direction: what the static rule keeps float, timed on int8 ----------------------------------


def _head_net(stem: bool = False):
    """A YOLOv8 box head's tail: x [N,16,8,8] -> conv1 (3x3) -> Transpose -> Softmax over the 16 channels ->
    Transpose back -> a 1x1 conv 16 -> 1 (16 MACs per output: the cost rule keeps it float, and with it the
    Softmax and Transposes, which the static plan never puts on int8). stem: a 1x1 conv 16 -> 16 reads x first
    (8 MACs per converted element: float by the cost rule; on int8 its input is still converted)."""
    rng = np.random.default_rng(5)
    w = {
        "w1": (rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32),
        "w2": np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1),
        **({"w0": (rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32)} if stem else {}),
    }
    first = [helper.make_node("Conv", ["x", "w0"], ["x0"], name="stem")] if stem else []
    nodes = [
        *first,
        helper.make_node("Conv", ["x0" if stem else "x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c1"], ["t1"], name="tr1", perm=[0, 2, 3, 1]),
        helper.make_node("Softmax", ["t1"], ["s"], name="softmax", axis=-1),
        helper.make_node("Transpose", ["s"], ["t2"], name="tr2", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t2", "w2"], ["y"], name="dfl"),
    ]
    return model_of(nodes, [vi("x", ["N", 16, 8, 8])], [vi("y", ["N", 1, 8, 8])], w)


TAIL = ("tr1", "softmax", "tr2", "dfl")


def test_int8_beyond_the_static_rule_is_kept_where_timed_faster(tmp_path, timer):
    save_with_data(tmp_path, _head_net(), (2, 16, 8, 8), n_calib=5)
    static = _q(tmp_path, placement="static")
    assert [static.plan.decision(n).action for n in TAIL] == [Action.FLOAT] * 4
    assert static.plan.decision("dfl").why == Why.SPEED
    r = _q(tmp_path)
    want = [Action.PASSTHROUGH, Action.INT8, Action.PASSTHROUGH, Action.INT8]
    assert [r.plan.decision(n).action for n in TAIL] == want
    moved = r.report.placement["timed"][-1]
    assert (moved["to"], moved["kept"], moved["ratio"]) == ("int8", True, pytest.approx(10 / 16, abs=1e-3))
    assert r.report.placement["int8_beyond_static"] == ["Softmax", "Transpose", "dfl"]
    assert any(n.startswith("measured placement: on int8 beyond the static rule") for n in r.report.notes)
    assert _cost(tmp_path / "q.onnx") == 10  # the written model is the one timed
    # onnxruntime runs the whole tail on integers: the only conversions left are at the graph's input and output.
    want_ops = {"QuantizeLinear": 1, "QLinearConv": 2, "Transpose": 2, "QLinearSoftmax": 1, "DequantizeLinear": 1}
    assert fused_ops(tmp_path / "q.onnx", tmp_path) == want_ops
    # Measured 41.6 dB (exact Q/DQ math); the static plan 44.4 dB.
    assert sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", batches_of(tmp_path / "e"), exact_qdq=True) > 39.5


def test_a_part_is_kept_when_the_whole_is_not_faster(tmp_path, timer, monkeypatch):
    """Int8 Softmax a little slower: all together is not faster (17 against 16) and not clearly slower, so the
    parts are timed: the trial ops alone change nothing (the cost rule undoes them), the 1x1 conv alone pays."""
    monkeypatch.setitem(COST, "Softmax", 5.0)
    save_with_data(tmp_path, _head_net(), (2, 16, 8, 8), n_calib=5)
    r = _q(tmp_path)
    moves = [t for t in r.report.placement["timed"] if t["to"] == "int8"]
    assert [(t["nodes"], t["kept"]) for t in moves] == [(3, False), (2, False), (1, True)]
    assert [r.plan.decision(n).action for n in TAIL] == [Action.FLOAT] * 3 + [Action.INT8]
    assert r.report.placement["int8_beyond_static"] == ["dfl"]


def test_parts_are_not_timed_when_the_whole_is_clearly_slower(tmp_path, timer, monkeypatch):
    monkeypatch.setitem(COST, "Softmax", 8.0)  # all together 20 against 16
    save_with_data(tmp_path, _head_net(), (2, 16, 8, 8), n_calib=5)
    loaded = []

    class Counted(session.Session):
        def __init__(self, path, *a, **k):
            super().__init__(path, *a, **k)
            loaded.append(Path(path))

    monkeypatch.setattr(session, "Session", Counted)
    monkeypatch.setattr(evaluate, "Session", Counted)
    r = _q(tmp_path)
    assert [t["to"] for t in r.report.placement["timed"]] == ["float", "int8"] and len(timer) == 3  # + FP32
    # Each model timed is loaded once: the best plan's session stays open from one timing to the next. (The
    # range refit's check measures its two candidates after.)
    trial_files = [p.name for p in loaded if p.parent.name.startswith("qcli-trials-") and p.name != "candidate.onnx"]
    assert sorted(trial_files) == ["best.onnx", "group0.onnx", "int8_0.onnx"]
    assert r.plan.to_dict()["nodes"] == _q(tmp_path, placement="static").plan.to_dict()["nodes"]


def test_int8_that_costs_accuracy_is_not_kept_however_fast(tmp_path, timer, monkeypatch):
    """No loss allowed (the guard's share set to nothing, no level quiet enough): each faster move is measured
    and refused."""
    monkeypatch.setattr(P, "gain_for", lambda share: 0.0)
    monkeypatch.setattr(P, "QUIET_DB", float("inf"))
    save_with_data(tmp_path, _head_net(), (2, 16, 8, 8), n_calib=5)
    r = _q(tmp_path)
    refused = [t for t in r.report.placement["timed"] if "worst_sqnr_db" in t]
    assert refused and not any(t["kept"] for t in refused)
    assert all(after < before for before, after in (t["worst_sqnr_db"] for t in refused))
    assert [r.plan.decision(n).action for n in TAIL] == [Action.FLOAT] * 4
    assert r.report.placement["int8_beyond_static"] == [] and "not kept: worst output" in render_markdown(r.report)


def test_int8_that_breaks_the_accuracy_target_is_not_kept(tmp_path, timer):
    """Measured on the held-aside calibration batch: the static plan 42.9 dB, the tail on int8 40.7 dB (above
    the guard's quiet level, so only the target refuses it)."""
    save_with_data(tmp_path, _head_net(), (2, 16, 8, 8), n_calib=5)
    r = _q(tmp_path, min_sqnr=41.5)
    refused = [t for t in r.report.placement["timed"] if "worst_sqnr_db" in t]
    assert refused and all(before >= 41.5 > after for before, after in (t["worst_sqnr_db"] for t in refused))
    assert r.report.placement["int8_beyond_static"] == [] and r.plan.decision("dfl").action == Action.FLOAT
    assert _q(tmp_path, min_sqnr=40.0).report.placement["int8_beyond_static"] == ["Softmax", "Transpose", "dfl"]


@pytest.mark.parametrize(("stem_cost", "stem_int8"), [(-4.0, True), (-0.2, False)])
def test_a_layer_promoted_with_its_input_still_converted_stays_int8_only_if_that_alone_pays(
    tmp_path, timer, monkeypatch, stem_cost, stem_int8
):
    """All together pays; then the stem (reading the graph input) is timed back to float: at -4 its int8 form
    saves 40%, at -0.2 only 2% (< MARGIN), and float, the more accurate, is kept."""
    monkeypatch.setitem(NODE_COST, "stem", stem_cost)
    save_with_data(tmp_path, _head_net(stem=True), (2, 16, 8, 8), n_calib=5)
    assert _q(tmp_path, placement="static").plan.decision("stem").why == Why.SPEED
    r = _q(tmp_path)
    back = r.report.placement["timed"][-1]
    assert (back["group"], back["to"], back["kept"]) == ("1 of them reading a converted input", "float", not stem_int8)
    assert r.plan.decision("dfl").action == Action.INT8 and r.plan.decision("softmax").action == Action.INT8
    stem = r.plan.decision("stem")
    assert (stem.action == Action.INT8) == stem_int8 and (stem.why == Why.MEASURED) != stem_int8
