"""The W8A8 planner (plan_w8a8.py, regions.py, ops.py): what each option decides, and what that decision
does to the written model and its outputs. Oracles: onnxruntime running the float model, numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from checks import batches_of, fused_ops, ops, run, sqnr, sqnr_on
from models import cnn, mlp, write_batches
from models import model_of as _model
from models import quantize_files as _quantize
from models import save_with_data as _files
from models import vi as _vi
from onnx import TensorProto, helper, numpy_helper

from qcli import QuantConfig, quantize
from qcli.core import hostcpu
from qcli.core.plan import Action, Why

# -- helpers ---------------------------------------------------------------------------------------------


def _plan(tmp_path, config):
    return quantize(tmp_path / "m.onnx", config, calib=tmp_path / "c", dry_run=True).plan


def _sqnr(tmp_path, cand, exact_qdq=False) -> float:
    """Output SQNR of `cand` against the float model, both run by onnxruntime on the evaluation batches."""
    return sqnr_on(tmp_path / "m.onnx", cand, batches_of(tmp_path / "e"), exact_qdq)


def _floor(plan, eight_bit: float, seven_bit: float) -> float:
    """The fidelity floor for the weight bits qcli chose for this machine's real CPU (auto: 7 bits without
    VNNI). Floors sit 2-3 dB under what was measured with 8-bit weights (VNNI) and with 7-bit ones."""
    return seven_bit if plan.decisions["reduce_range"]["value"] else eight_bit


def _actions(plan) -> dict[str, str]:
    return {d.node: d.action.value for d in plan.nodes}


def _weight_of(model, node_name) -> np.ndarray:
    """The stored weight of a node in a written model: its initializer, or the integers its DQ reads."""
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    w = node.input[1]
    if w in inits:
        return numpy_helper.to_array(inits[w])
    dq = next(n for n in model.graph.node if w in n.output)
    assert dq.op_type == "DequantizeLinear"
    return numpy_helper.to_array(inits[dq.input[0]])


def _weight_dq_scales(model) -> list[np.ndarray]:
    """Scales of the DequantizeLinear nodes that read int8 weights (initializers of 8-bit type)."""
    inits = {t.name: t for t in model.graph.initializer}
    return [
        numpy_helper.to_array(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8
    ]


def _conv_stack():
    """Conv 8->16 (3x3) -> Relu -> depthwise Conv 16 (3x3) -> Relu -> Conv 16->8 (3x3): [N,8,12,12]."""
    rng = np.random.default_rng(11)
    inits = {
        "w1": (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32),
        "b1": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "wd": (rng.standard_normal((16, 1, 3, 3)) * 0.3).astype(np.float32),
        "w3": (rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(np.float32),
    }
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd"], ["c2"], name="dw", pads=pads, group=16),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3", pads=pads),
    ]
    return _model(nodes, [_vi("x", ["N", 8, 12, 12])], [_vi("y", ["N", 8, 12, 12])], inits)


@pytest.fixture
def cnn_files(tmp_path):
    _files(tmp_path, cnn(), (2, 3, 16, 16), n_calib=6)
    return tmp_path


# -- regions -----------------------------------------------------------------------------------------------


def test_passthrough_shares_scale_with_its_input(cnn_files):
    """MaxPool moves int8 data: its output reuses its input's scale and zero point (the runtime drops DQ ->
    MaxPool -> Q only then). The shared scale is r2's range over the calibration data (oracle: onnxruntime
    running the float model with r2 as an extra output), Relu folded so the range starts at 0."""
    r = _quantize(cnn_files, QuantConfig())
    p2, r2 = r.plan.activations["p2"], r.plan.activations["r2"]
    assert p2.share == "r2" and (p2.scale, p2.zero_point) == (r2.scale, r2.zero_point)
    probe = cnn()
    probe.graph.output.append(_vi("r2", None))
    calib = batches_of(cnn_files / "c")[:-1]  # the last of 6 files is held aside for the report
    top = max(float(run(probe, f)[1].max()) for f in calib)
    assert r2.zero_point == 0 and r2.scale == pytest.approx(top / 255, rel=1e-5)
    # In the written model the MaxPool's DQ and Q read the same scale and zero point initializers.
    q = onnx.load(str(r.output))
    producer = {o: n for n in q.graph.node for o in n.output}
    pool = next(n for n in q.graph.node if n.op_type == "MaxPool")
    dq_in = producer[pool.input[0]]
    q_out = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    assert dq_in.op_type == "DequantizeLinear" and list(dq_in.input[1:]) == list(q_out.input[1:])
    assert "DequantizeLinear" not in fused_ops(r.output, cnn_files)  # the pool runs on uint8 directly


def test_mlp_matmul_outputs_float_where_only_float_reads_them(tmp_path):
    """mm2's output is read only by a float Add: mm2 writes float itself (MatMulIntegerToFloat) instead of
    writing int8 that a DequantizeLinear would turn straight back."""
    onnx.save(mlp(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 7, 64), (1, 11, 64), (3, 5, 64)])  # varying sequence lengths
    write_batches(tmp_path / "e", [(2, 9, 64)] * 2, seed=7)
    r = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=0))
    assert _actions(r.plan) == {
        "mm1": "int8",
        "add1": "int8",
        "relu1": "folded-into-q",
        "mm2": "int8-float-out",
        "add2": "float",
    }
    assert "m2" not in r.plan.activations  # no Q/DQ on the float-out MatMul's output
    fused = fused_ops(r.output, tmp_path)
    assert fused["QLinearMatMul"] == 1 and fused["MatMulIntegerToFloat"] == 1 and fused["QLinearAdd"] == 1
    assert _sqnr(tmp_path, r.output) > _floor(r.plan, 35, 31.5)  # measured 37.9 dB (8-bit), 34.4 dB (7-bit)


def test_cost_model_keeps_tiny_ops_float_and_says_why(tmp_path):
    """K=8 MatMuls on [2,3,8] tokens, both under 48 MACs per element converted to/from int8 (hand count:
    mm1 8 * 48 outputs / 48 inputs = 8; mm2, once mm1 is float, 8 * 60 outputs / 48 inputs = 10). Nothing
    is left to quantize: the written graph is the float graph."""
    onnx.save(mlp(k=8, hidden=8), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 3, 8)] * 3)
    write_batches(tmp_path / "e", [(2, 3, 8)] * 2, seed=7)
    r = _quantize(tmp_path, QuantConfig())
    mms = {d.node: d for d in r.plan.nodes if d.op_type == "MatMul"}
    assert {n: d.why for n, d in mms.items()} == {"mm1": Why.SPEED, "mm2": Why.SPEED}
    for name, ratio in (("mm1", 8.0), ("mm2", 10.0)):
        assert mms[name].reason.details == {"macs_per_conversion": pytest.approx(ratio), "threshold": 48.0}
    assert set(r.report.float_for_speed) == {"mm1", "mm2"}
    assert ops(r.output) == ops(tmp_path / "m.onnx")
    assert _sqnr(tmp_path, r.output) == float("inf")


# -- per_channel -------------------------------------------------------------------------------------------


def _two_scale_head():
    """Conv 4->8 -> Relu -> GlobalAveragePool -> Flatten -> Gemm 8->16 whose output channels 8..15 have
    weights 100x smaller than channels 0..7 (and the Conv the same split over its channels)."""
    rng = np.random.default_rng(21)
    wc = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    wc[4:] *= 0.01
    fc = (rng.standard_normal((16, 8)) * 0.5).astype(np.float32)
    fc[8:] *= 0.01
    inits = {"wc": wc, "bc": np.full(8, 0.05, np.float32), "fc": fc, "fb": np.zeros(16, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_vi("x", ["N", 4, 10, 10])], [_vi("y", ["N", 16])], inits)


def test_per_tensor_weights_have_one_scale_and_lose_the_small_channels(tmp_path):
    """per_channel=False: one scale per weight tensor, in the plan (axis None) and in the file (scalar
    scales). With channels 100x apart, the small ones' weights round to a few levels around 0: their
    outputs (the Gemm writes float, so no activation quantizer hides it) lose most of their SQNR.
    Measured with 8-bit weights: small channels 45.4 dB per channel, 7.8 dB per tensor, big ones 42.4 vs 44.5;
    with 7-bit: small 39.2 vs -0.5, big 39.3 vs 40.4."""
    _files(tmp_path, _two_scale_head(), (8, 4, 10, 10))
    results = {}
    for per_channel in (True, False):
        r = _quantize(
            tmp_path,
            QuantConfig.of(per_channel=per_channel, min_macs_per_conversion=0, bias_correction=False),
            f"q{per_channel}.onnx",
        )
        weights = [w for w in r.plan.weights if w.role == "weight"]
        assert {w.node for w in weights} == {"conv", "fc"}
        scales = _weight_dq_scales(onnx.load(str(r.output)))
        assert len(scales) == 2
        if per_channel:
            assert {w.node: w.axis for w in weights} == {"conv": 0, "fc": 0}
            assert sorted(s.shape for s in scales) == [(8,), (16,)]
        else:
            assert all(w.axis is None for w in weights)
            assert all(s.shape == () for s in scales)
        feeds = batches_of(tmp_path / "e")
        ref = np.concatenate([run(tmp_path / "m.onnx", f)[0] for f in feeds])
        out = np.concatenate([run(r.output, f)[0] for f in feeds])
        results[per_channel] = (sqnr(ref[:, :8], out[:, :8]), sqnr(ref[:, 8:], out[:, 8:]))
    (big_pc, small_pc), (big_pt, small_pt) = results[True], results[False]
    assert small_pc > _floor(r.plan, 42.5, 36.5) and big_pc > _floor(r.plan, 39.5, 36.5)
    assert big_pt > _floor(r.plan, 41.5, 37.5)
    assert small_pt < _floor(r.plan, 10.5, 2.5) and small_pc - small_pt > 34


# -- activation_symmetric ----------------------------------------------------------------------------------


def test_symmetric_activations_are_int8_with_zero_point_zero(cnn_files):
    """activation_symmetric=True: every activation int8 with zero point 0, in the plan and in the written
    model's Q/DQ zero points; Relu is no longer folded (int8 Q does not saturate at 0).
    Measured 40.0 dB with 8-bit weights, 33.2 dB with 7-bit (exact QDQ and fused alike)."""
    r = _quantize(cnn_files, QuantConfig.of(activation_symmetric=True, min_macs_per_conversion=0))
    acts = r.plan.activations.values()
    assert acts and {(a.qtype, a.zero_point) for a in acts} == {("int8", 0)}
    assert not r.plan.by_action(Action.FOLDED)
    assert {d.node for d in r.plan.by_action(Action.INT8)} >= {"conv1", "conv2", "conv3"}
    q = onnx.load(str(r.output))
    inits = {t.name: t for t in q.graph.initializer}
    zps = [
        inits[n.input[2]]
        for n in q.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[0] not in inits
    ]
    assert len(zps) >= len(r.plan.activations)
    assert {z.data_type for z in zps} == {TensorProto.INT8}
    assert all(not numpy_helper.to_array(z).any() for z in zps)
    exact, fused = _sqnr(cnn_files, r.output, exact_qdq=True), _sqnr(cnn_files, r.output)
    floor = _floor(r.plan, 37.5, 30.5)
    assert exact > floor and fused > floor


# -- reduce_range ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce_range", [True, False, None], ids=["on", "off", "auto"])
def test_reduce_range_sets_the_weight_bits_and_auto_follows_the_cpu(tmp_path, cpu_kind, reduce_range):
    """7-bit weights (-64..63) where chosen, full 8 bits otherwise; auto: 7 on a CPU without VNNI (AVX2),
    8 with VNNI. Depthwise convs keep 8 bits either way (their kernels accumulate in 32 bits). The decision
    and the CPU it was made for are recorded. Fidelity measured on the exact QDQ math (kernel-independent):
    measured 34.1 dB (8-bit) and 31.9 dB (7-bit)."""
    kind, _ = cpu_kind
    _files(tmp_path, _conv_stack(), (2, 8, 12, 12))
    r = _quantize(tmp_path, QuantConfig.of(reduce_range=reduce_range, min_macs_per_conversion=0))
    seven = reduce_range if reduce_range is not None else kind == "avx2"
    decided = r.plan.decisions["reduce_range"]
    assert decided["value"] is seven
    assert decided["cpu"]["int32_dot"] == ("avx512_vnni" if kind == "vnni" else None)
    assert decided["cpu"]["model"] == ("Test Xeon VNNI" if kind == "vnni" else "Test EPYC AVX2")
    qtypes = {w.node: w.qtype for w in r.plan.weights if w.role == "weight"}
    dense = "int8-7bit" if seven else "int8"
    assert qtypes == {"conv1": dense, "dw": "int8", "conv3": dense}
    q = onnx.load(str(r.output))
    for name in ("conv1", "conv3"):
        w = _weight_of(q, name)
        assert w.dtype == np.int8
        w = w.astype(int)
        if seven:
            assert w.min() >= -64 and w.max() <= 63 and np.abs(w).max() == 63
        else:
            assert np.abs(w).max() == 127
    assert np.abs(_weight_of(q, "dw").astype(int)).max() == 127
    exact = _sqnr(tmp_path, r.output, exact_qdq=True)
    assert exact > (29.5 if seven else 31.5)


def _single_conv(group: int, path):
    rng = np.random.default_rng(0)
    w = (np.abs(rng.standard_normal((32, 32 // group, 3, 3))) + 1).astype(np.float32)
    m = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1], group=group)],
        [_vi("x", [1, 32, 16, 16])],
        [_vi("y", [1, 32, 16, 16])],
        {"w": w},
    )
    onnx.save(m, path)


@pytest.mark.parametrize("group", [1, 32], ids=["dense", "depthwise"])
def test_weights_that_would_saturate_int8_kernels_stay_accurate(tmp_path, group):
    """Inputs near the top of their range and positive weights: every product pair is ~255 x 127, which
    overflows int16 pair sums on x86 without VNNI. On the real CPU of this machine (whichever kind it is),
    the auto-chosen weight range makes the fused integer kernels as accurate as the exact QDQ math.
    (Measured on AVX2: dense 8-bit weights 26.9 dB fused vs 57.9 dB exact; 7-bit 56.8 dB. On VNNI:
    8-bit 57.9 dB dense, 53.8 dB depthwise, fused and exact alike; 7-bit 57.5 dB dense.)"""
    _single_conv(group, tmp_path / "m.onnx")
    for folder, n, seed in (("c", 4, 1), ("e", 2, 7)):
        (tmp_path / folder).mkdir()
        rng = np.random.default_rng(seed)
        for i in range(n):
            np.save(tmp_path / folder / f"{i}.npy", (2.9 + 0.1 * rng.random((1, 32, 16, 16))).astype(np.float32))
    r = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=0))
    saturates = hostcpu.host().u8s8_may_saturate
    assert r.plan.decisions["reduce_range"]["value"] is saturates
    assert r.plan.weights[0].qtype == ("int8-7bit" if saturates and group == 1 else "int8")
    fused, exact = _sqnr(tmp_path, r.output), _sqnr(tmp_path, r.output, exact_qdq=True)
    assert fused > (54 if group == 1 else 51) and fused > exact - 2
    reduced = QuantConfig.of(reduce_range=True, min_macs_per_conversion=0)
    plan = _plan(tmp_path, reduced)
    assert plan.weights[0].qtype == ("int8" if group == 32 else "int8-7bit")  # depthwise kernels cannot saturate


# -- exclude -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern,kept",
    [("conv2", {"conv2"}), ("Conv", {"conv1", "conv2", "conv3"}), ("conv*", {"conv1", "conv2", "conv3"})],
    ids=["name", "op-type", "glob"],
)
def test_exclude_keeps_the_matching_nodes_float(cnn_files, pattern, kept):
    """--exclude by node name, op type or glob: the matched convs are float (Why.EXCLUDED, naming the
    pattern), the written model runs them as float Conv on their float32 weights, the rest still runs on
    integer kernels. Fidelity of the model as written (exact QDQ: see the next test for what onnxruntime
    does to an excluded conv between int8 neighbours): measured 44.4 dB (name), 43.8 dB (op type, glob)
    with 8-bit weights; 33.6 and 40.5 dB with 7-bit."""
    r = _quantize(cnn_files, QuantConfig.of(exclude=(pattern,), min_macs_per_conversion=0))
    excluded = {d.node: d.reason.details for d in r.plan.by_reason(Why.EXCLUDED)}
    assert excluded == {n: {"pattern": pattern} for n in kept}
    assert all(r.plan.decision(n).action == Action.FLOAT for n in kept)
    q = onnx.load(str(r.output))
    for name in {"conv1", "conv2", "conv3"}:
        w = _weight_of(q, name)
        assert (w.dtype == np.float32) == (name in kept)
    assert ops(r.output)["Conv"] == 3
    assert "QGemm" in fused_ops(r.output, cnn_files)  # the head still runs on integer kernels
    floor = _floor(r.plan, 41.5, 31) if len(kept) == 1 else _floor(r.plan, 41, 37.5)
    assert _sqnr(cnn_files, r.output, exact_qdq=True) > floor


def test_an_excluded_conv_between_int8_neighbours_runs_float_in_onnxruntime(cnn_files):
    """--exclude conv2 (between int8 conv1 and conv3): onnxruntime must run it as a float Conv, so the
    fused output equals the exact QDQ math. (Its WeightBiasQuantization turns a float Conv reading a
    per-tensor DQ and writing into a Q into a QLinearConv with its own per-tensor 8-bit weights: before the
    rewrite avoided that pattern, fused 42.5 dB vs exact 44.4 dB.)"""
    r = _quantize(cnn_files, QuantConfig.of(exclude=("conv2",), min_macs_per_conversion=0))
    fused = fused_ops(r.output, cnn_files)
    assert fused.get("QLinearConv", 0) == 2 and fused.get("Conv", 0) + fused.get("FusedConv", 0) == 1
    assert _sqnr(cnn_files, r.output) == pytest.approx(_sqnr(cnn_files, r.output, exact_qdq=True), abs=0.3)


def test_exclude_matching_nothing_changes_nothing_and_warns(cnn_files):
    """An --exclude pattern that matches no node name, op type or glob: the same plan as without it, and a
    warning naming the pattern (none without it)."""
    base = _plan(cnn_files, QuantConfig())
    r = quantize(cnn_files / "m.onnx", QuantConfig.of(exclude=("no_such_node",)), calib=cnn_files / "c", dry_run=True)
    assert r.plan.nodes == base.nodes and r.plan.activations == base.activations
    assert any("no_such_node" in w for w in r.report.warnings)
    assert not quantize(cnn_files / "m.onnx", QuantConfig(), calib=cnn_files / "c", dry_run=True).report.warnings


# -- min_macs_per_conversion -------------------------------------------------------------------------------


def _conv_then_pointwise():
    """x [1,16,16,16] -> Conv 3x3 16->16 -> Relu -> Conv 1x1 16->16 -> y. Hand count of MACs per element
    converted to/from int8: conv2 = 16 (16 MACs per output, its float output converted), conv1 = 144 while
    conv2 is int8 (only x converted), 72 once conv2 is float (x and its output converted)."""
    rng = np.random.default_rng(31)
    inits = {
        "w1": (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    return _model(nodes, [_vi("x", [1, 16, 16, 16])], [_vi("y", [1, 16, 16, 16])], inits)


def test_min_macs_threshold_keeps_exactly_the_cheap_conv_float(tmp_path):
    """A threshold of 40 (between conv2's 16 and conv1's 72) keeps conv2 float for speed; 0 quantizes both.
    Measured: 39.2 dB with conv2 float, 35.4 dB with both int8 (8-bit weights); 36.4 and 33.4 (7-bit)."""
    _files(tmp_path, _conv_then_pointwise(), (1, 16, 16, 16))
    cheap = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=40), "cheap.onnx")
    assert [d.node for d in cheap.plan.by_reason(Why.SPEED)] == ["conv2"]
    d = cheap.plan.decision("conv2")
    assert d.action == Action.FLOAT
    assert d.reason.details == {"macs_per_conversion": pytest.approx(16.0), "threshold": 40}
    assert cheap.plan.decision("conv1").action == Action.INT8
    everything = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=0), "all.onnx")
    assert not everything.plan.by_reason(Why.SPEED)
    assert {d.node for d in everything.plan.by_action(Action.INT8)} == {"conv1", "conv2"}
    assert fused_ops(cheap.output, tmp_path)["QLinearConv"] == 1
    assert fused_ops(everything.output, tmp_path)["QLinearConv"] == 2
    assert ops(cheap.output)["QuantizeLinear"] == 2 and ops(everything.output)["QuantizeLinear"] == 3
    a, b = _sqnr(tmp_path, cheap.output), _sqnr(tmp_path, everything.output)
    assert a > _floor(cheap.plan, 36.5, 33.5) and b > _floor(everything.plan, 32.5, 30.5)
    # 100 is above conv1's 72 too: nothing is left on int8.
    none = _plan(tmp_path, QuantConfig.of(min_macs_per_conversion=100))
    assert {d.node for d in none.by_reason(Why.SPEED)} == {"conv1", "conv2"}
    assert none.decision("conv1").reason.details["macs_per_conversion"] == pytest.approx(72.0)


# -- min_activation_sqnr (accuracy guard) -------------------------------------------------------------------


def _spiky_batches(folder, spike: float, n=4, seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = rng.standard_normal((4, 16, 64)).astype(np.float32)
        x.reshape(-1)[rng.integers(0, x.size, 2)] = spike * (1 if i % 2 else -1)
        np.save(folder / f"{i}.npy", x)


def _own_activation_sqnr(values: list[np.ndarray]) -> float:
    """SQNR of uint8 asymmetric min/max quantize-dequantize over all batches (numpy, from the definition)."""
    lo = min(0.0, min(float(v.min()) for v in values))
    hi = max(0.0, max(float(v.max()) for v in values))
    scale = (hi - lo) / 255
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    signal = noise = 0.0
    for v in values:
        q = np.clip(np.rint(v / scale) + zp, 0, 255)
        e = v.astype(np.float64) - (q - zp) * scale
        signal, noise = signal + float(np.sum(v.astype(np.float64) ** 2)), noise + float(np.sum(e**2))
    return 10 * np.log10(signal / noise)


def test_accuracy_guard_keeps_float_an_op_whose_input_range_is_set_by_outliers(tmp_path):
    """Input with rare spikes (range ~+-100, most values in the N(0,1) bulk): per-tensor 8-bit leaves the
    bulk a step of ~0.8, about 20 dB (the spikes carry much of the energy). The MatMul reading it stays
    float, and the plan says why; with the guard off (0) it is quantized and the output loses accordingly.
    Measured: x 20.6 dB; output 27.3 dB guarded, 20.4 dB off (8-bit weights); 26.5 and 20.0 (7-bit)."""
    onnx.save(mlp(k=64, hidden=128), tmp_path / "m.onnx")
    _spiky_batches(tmp_path / "c", 100.0)
    _spiky_batches(tmp_path / "e", 100.0, n=2, seed=9)
    x_db = _own_activation_sqnr([f["x"] for f in batches_of(tmp_path / "c")])
    per_tensor = QuantConfig.of(min_macs_per_conversion=0, accuracy_guard=False, min_activation_sqnr=22)
    guarded = _quantize(tmp_path, per_tensor, "g.onnx")
    d = guarded.plan.decision("mm1")
    assert d.action == Action.FLOAT and d.why == Why.ACCURACY
    assert d.reason.details == {"tensor": "x", "sqnr_db": pytest.approx(x_db, abs=0.2), "threshold": 22}
    by_output = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=0), "o.onnx")  # the default guard agrees
    assert [d.node for d in by_output.plan.by_reason(Why.ACCURACY)] == ["mm1"]
    assert guarded.plan.decision("mm2").action != Action.FLOAT  # its input is well spread
    off = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=0, accuracy_guard=False), "off.onnx")
    assert off.plan.decision("mm1").action == Action.INT8
    assert not off.plan.by_reason(Why.ACCURACY)
    assert "MatMul" not in fused_ops(off.output, tmp_path)
    a, b = _sqnr(tmp_path, guarded.output), _sqnr(tmp_path, off.output)
    assert a > 24 and b < 23 and a - b > 4.5


def test_accuracy_guard_threshold_between_two_tensors_keeps_only_the_weaker_reader_float(tmp_path):
    """Mild spikes (x20) put x at ~27 dB, the hidden r1 sits higher: both pass the old default per-tensor
    threshold of 22 dB; a threshold halfway between the two (computed here from numpy quantize-dequantize of
    the float values) keeps only mm1 (reader of x) float. Measured: x 27.6 dB, r1 41.1 dB."""
    onnx.save(mlp(k=64, hidden=128), tmp_path / "m.onnx")
    _spiky_batches(tmp_path / "c", 20.0)
    _spiky_batches(tmp_path / "e", 20.0, n=2, seed=9)
    calib = batches_of(tmp_path / "c")
    probe = mlp(k=64, hidden=128)
    probe.graph.output.append(_vi("r1", None))
    x_db = _own_activation_sqnr([f["x"] for f in calib])
    r1_db = _own_activation_sqnr([run(probe, f)[1] for f in calib])
    assert 22 < x_db < r1_db - 5
    default = _plan(tmp_path, QuantConfig.of(min_macs_per_conversion=0, min_activation_sqnr=22))
    assert not default.by_reason(Why.ACCURACY)
    threshold = (x_db + r1_db) / 2
    plan = _plan(tmp_path, QuantConfig.of(min_macs_per_conversion=0, min_activation_sqnr=threshold))
    assert [d.node for d in plan.by_reason(Why.ACCURACY)] == ["mm1"]
    details = plan.decision("mm1").reason.details
    assert details["tensor"] == "x" and details["sqnr_db"] == pytest.approx(x_db, abs=0.2)
    assert plan.decision("mm2").action != Action.FLOAT


# -- node names ----------------------------------------------------------------------------------------------


def _chain(names: list[str]):
    """x [N,8,10,10] -> (Conv -> Relu) x 3 with the given node names, in order."""
    rng = np.random.default_rng(41)
    inits, nodes, t = {}, [], "x"
    for i in range(3):
        inits[f"w{i}"] = (rng.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32)
        nodes.append(helper.make_node("Conv", [t, f"w{i}"], [f"c{i}"], name=names[2 * i], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=names[2 * i + 1]))
        t = f"r{i}"
    return _model(nodes, [_vi("x", ["N", 8, 10, 10])], [_vi(t, ["N", 8, 10, 10])], inits)


def test_unnamed_nodes_are_named_without_collisions_and_quantize_as_named_ones(tmp_path):
    """Node names "conv", "Relu_1", "", "", "conv_x", "" (an unnamed Relu's natural new name "Relu_1" is
    taken): the plan has one distinct name per node, every node decided, the same actions and the same
    output as the uniquely named model. Measured 35.7 dB both (8-bit weights), 31.4 dB (7-bit)."""
    plain = ["conv_a", "relu_a", "conv_b", "relu_b", "conv_c", "relu_c"]
    messy = ["conv", "Relu_1", "", "", "conv_x", ""]
    results = {}
    for label, names in (("plain", plain), ("messy", messy)):
        folder = tmp_path / label
        folder.mkdir()
        _files(folder, _chain(names), (2, 8, 10, 10))
        r = _quantize(folder, QuantConfig.of(min_macs_per_conversion=0))
        nodes = [d.node for d in r.plan.nodes]
        assert len(nodes) == 6 and len(set(nodes)) == 6 and all(nodes)
        results[label] = (r, [(d.op_type, d.action) for d in r.plan.nodes], _sqnr(folder, r.output))
    (_, plain_actions, plain_db), (messy_r, messy_actions, messy_db) = results["plain"], results["messy"]
    assert messy_actions == plain_actions == [("Conv", Action.INT8), ("Relu", Action.FOLDED)] * 3
    assert {"conv", "Relu_1", "conv_x"} <= {d.node for d in messy_r.plan.nodes}
    assert messy_db == pytest.approx(plain_db, abs=0.01) and plain_db > _floor(messy_r.plan, 33, 28.5)
    q = onnx.load(str(messy_r.output))
    assert len({n.name for n in q.graph.node}) == len(q.graph.node)
    assert fused_ops(messy_r.output, tmp_path / "messy")["QLinearConv"] == 3


def test_duplicate_named_nodes_each_get_their_own_decision(tmp_path):
    """Three Convs all named "conv" and three Relus all named "relu" (onnxruntime refuses such a model):
    each node gets its own decision under its own name, the plan covers every node, and the written model
    computes what the uniquely named model's quantization computes. Measured 35.7 dB (8-bit weights),
    31.4 dB (7-bit)."""
    _files(tmp_path, _chain(["conv", "relu"] * 3), (2, 8, 10, 10))
    r = _quantize(tmp_path, QuantConfig.of(min_macs_per_conversion=0))
    nodes = [d.node for d in r.plan.nodes]
    assert len(nodes) == 6 and len(set(nodes)) == 6
    assert [(d.op_type, d.action) for d in r.plan.nodes] == [("Conv", Action.INT8), ("Relu", Action.FOLDED)] * 3
    assert {w.node for w in r.plan.weights} == {nodes[0], nodes[2], nodes[4]}
    q = onnx.load(str(r.output))
    assert len({n.name for n in q.graph.node}) == len(q.graph.node)
    assert fused_ops(r.output, tmp_path)["QLinearConv"] == 3
    plain = tmp_path / "plain.onnx"
    onnx.save(_chain(["conv_a", "relu_a", "conv_b", "relu_b", "conv_c", "relu_c"]), plain)
    measured = sqnr_on(plain, r.output, batches_of(tmp_path / "e"))
    floor = _floor(r.plan, 33, 28.5)
    assert measured > floor
    assert r.report.fidelity and r.report.fidelity[0].sqnr_db > floor  # on the calibration data: 35.7 dB
