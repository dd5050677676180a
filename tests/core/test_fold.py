"""Fold rules: ops after an int8 producer that disappear into the QuantizeLinear that follows (qcli/fold.py,
regions.py `_foldable` / `_shrink`, plan_w8a8.py `_chain_q`, passes/qdq.py).

Relu and Clip(0, hi) fold because uint8 saturation at the zero point clamps; Mul(x, a > 0), Div(x, c > 0) and
Add(x, b) fold into the Q's scale and zero point. Every end-to-end test checks three things: the plan (which
nodes are `folded-into-q`), the rewritten graph (folded nodes gone, the others still there) and the output,
against onnxruntime running the float model, with a floor a few dB under the SQNR measured when written.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from checks import batches_of, fused_ops, ops, sqnr_on
from models import write_batches
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcli import QuantConfig, quantize
from qcli.core import fold
from qcli.core.graph import GraphIndex
from qcli.core.plan import Action

FOLDABLE_OPS = ("Relu", "Clip", "Mul", "Div", "Add")
# reduce_range=True: 7-bit weights cannot saturate uint8 x int8 products on any CPU, so the fused kernels
# compute what the QDQ graph says on AVX2 and VNNI machines alike. min_macs=0: the cost model would keep
# these small convolutions float.
CONFIG = {"min_macs_per_conversion": 0, "reduce_range": True}


# -- models ----------------------------------------------------------------------------------------------


def _model(nodes, inits, outputs: dict, opset=17, inputs=None):
    """A checked model; `outputs` maps each graph output to its shape."""
    g = helper.make_graph(
        nodes,
        "fold",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _const(inits, name, value):
    inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
    return name


def chain_model(steps, opset=17, bias=None, tap=None, expose=None):
    """x -> conv1 -> c1 -> steps (t0, t1, ...) -> conv2 -> y.

    A step is ("Relu",), ("Clip", lo, hi) with min/max as inputs (None: input left out), ("ClipAttr", lo, hi)
    with min/max as attributes (opset < 11), (op, k) for Mul/Add/Div with a constant scalar k,
    ("MulFirst", k) for Mul(k, x), ("MulVec", k) for Mul by a per-channel [16, 1, 1] constant.
    `bias`: conv1's bias (every channel). `tap`: a tensor also read by conv3 -> y2 (a second reader).
    `expose`: a tensor that is also a graph output. Node names: conv1, <op>0, <op>1, ..., conv2 (conv3)."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(np.float32), "w2"),
    ]
    conv1_in = ["x", "w1"] + ([_const(inits, "b1", np.full(16, bias))] if bias is not None else [])
    nodes = [helper.make_node("Conv", conv1_in, ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    t = "c1"
    for i, (op, *args) in enumerate(steps):
        out, name = f"t{i}", f"{op.lower()}{i}"
        if op == "Relu":
            node = helper.make_node("Relu", [t], [out], name=name)
        elif op == "Clip":
            lo, hi = args
            ins = [t, "" if lo is None else _const(inits, f"lo{i}", lo)]
            ins += [] if hi is None else [_const(inits, f"hi{i}", hi)]
            node = helper.make_node("Clip", ins, [out], name=f"clip{i}")
        elif op == "ClipAttr":
            lo, hi = args
            bounds = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
            node = helper.make_node("Clip", [t], [out], name=f"clip{i}", **bounds)
        elif op == "MulFirst":
            node = helper.make_node("Mul", [_const(inits, f"k{i}", args[0]), t], [out], name=f"mul{i}")
        elif op == "MulVec":
            k = _const(inits, f"k{i}", np.full((16, 1, 1), args[0]))
            node = helper.make_node("Mul", [t, k], [out], name=f"mul{i}")
        else:
            node = helper.make_node(op, [t, _const(inits, f"k{i}", args[0])], [out], name=name)
        nodes.append(node)
        t = out
    nodes.append(helper.make_node("Conv", [t, "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]))
    outputs = {"y": [1, 8, 12, 12]}
    if tap:
        inits.append(numpy_helper.from_array((rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(np.float32), "w3"))
        nodes.append(helper.make_node("Conv", [tap, "w3"], ["y2"], name="conv3", pads=[1, 1, 1, 1]))
        outputs["y2"] = [1, 8, 12, 12]
    if expose:
        outputs[expose] = [1, 16, 12, 12]
    return _model(nodes, inits, outputs, opset)


def quantize_and_measure(tmp_path: Path, model, shape=(1, 3, 12, 12), **config):
    """Quantize with calibration data, then the worst output SQNR on other data, the float model run by
    onnxruntime as the reference (through onnxruntime's fused integer kernels)."""
    onnx.save(model, tmp_path / "m.onnx")
    write_batches(tmp_path / "calib", [shape] * 4, seed=1)
    write_batches(tmp_path / "eval", [shape] * 4, seed=2)
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(**{**CONFIG, **config}),
        calib=tmp_path / "calib",
        eval_dir=tmp_path / "eval",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    return r, sqnr_on(tmp_path / "m.onnx", r.output, batches_of(tmp_path / "eval"))


def folded(plan) -> set[str]:
    return {d.node for d in plan.by_action(Action.FOLDED)}


def check_graph(r, expect_folded: set[str]) -> None:
    """Folded nodes are gone from the written graph, every other Relu/Clip/Mul/Div/Add is still there."""
    node_names = {n.name for n in onnx.load(str(r.output)).graph.node}
    others = {d.node for d in r.plan.nodes if d.op_type in FOLDABLE_OPS} - expect_folded
    assert not expect_folded & node_names
    assert others <= node_names


# -- end to end: conv1 -> chain -> conv2 ------------------------------------------------------------------

# (id, steps, builder options, nodes folded, SQNR floor in dB, about 3 under the measured value; measured on
# an AVX-512 VNNI machine, the same with graph optimizations off, in the comment).
CASES = [
    ("relu", [("Relu",)], {}, {"relu0"}, 29.5),  # 32.9
    ("clip-0-6-inputs", [("Clip", 0.0, 6.0)], {}, {"clip0"}, 30),  # 33.2
    ("clip-max-only", [("Clip", None, 6.0)], {}, set(), 27),  # 30.3; min left out: no lower bound
    ("clip-0.5-6", [("Clip", 0.5, 6.0)], {}, set(), 30.5),  # 33.5; uint8 saturates at 0, not 0.5: 9.7 folded
    ("clip-no-bounds", [("Clip", None, None)], {}, set(), 27),  # 30.1
    ("mul", [("Mul", 0.5)], {}, {"mul0"}, 27),  # 30.1
    ("mul-const-first", [("MulFirst", 0.5)], {}, {"mul0"}, 27),  # 30.1
    ("div", [("Div", 4.0)], {}, {"div0"}, 27),  # 30.1
    ("add", [("Add", 0.75)], {}, {"add0"}, 29.5),  # 32.6
    ("add-negative", [("Add", -1.5)], {}, {"add0"}, 27.5),  # 30.9
    ("mul-add-relu", [("Mul", 0.5), ("Add", 0.25), ("Relu",)], {}, {"mul0", "add1", "relu2"}, 29.5),  # 32.8
    ("mul-relu-mul", [("Mul", 2.0), ("Relu",), ("Mul", 0.25)], {}, {"mul0", "relu1", "mul2"}, 29.5),  # 32.9
    ("div-add-clip", [("Div", 2.0), ("Add", 0.5), ("Clip", 0.0, 6.0)], {}, {"div0", "add1", "clip2"}, 31.5),  # 34.5
    # a shift after a clamp would move the clamp point: the Add stays (as QLinearAdd)
    ("relu-add", [("Relu",), ("Add", 1.0)], {}, {"relu0"}, 32),  # 35.1
    ("clip-add", [("Clip", 0.0, 6.0), ("Add", -0.5)], {}, {"clip0"}, 29),  # 31.9
    # a negative scale flips which end saturates
    ("mul-negative", [("Mul", -1.0)], {}, set(), 27),  # 30.1
    ("div-negative", [("Div", -2.0)], {}, set(), 27),  # 30.1
    ("mul-then-mul-negative", [("Mul", 0.5), ("Mul", -2.0)], {}, {"mul0"}, 27),  # 30.1
    ("mul-per-channel", [("MulVec", 0.5)], {}, set(), 27),  # 30.1; not a scalar
    # conv1 writes ~[9, 11]; y = c1 - 100 has scale ~0.36, zero point 255: the shift -280 leaves uint8
    ("add-overflow", [("Add", -100.0)], {"bias": 10.0}, set(), 35),  # 38.3
    # a tensor read twice, or read outside the graph, keeps its values: what reads it after the fold breaks
    ("two-readers", [("Relu",)], {"tap": "c1"}, set(), 29),  # 32.1
    ("two-readers-mid-chain", [("Mul", 0.5), ("Relu",)], {"tap": "t0"}, {"mul0"}, 29),  # 32.1
    ("graph-output", [("Relu",)], {"expose": "c1"}, set(), 29),  # 32.1
    ("graph-output-mid-chain", [("Mul", 0.5), ("Relu",)], {"expose": "t0"}, {"mul0"}, 29),  # 32.1
]


@pytest.mark.parametrize("steps,options,expect,floor", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fold_plan_graph_and_output(tmp_path, steps, options, expect, floor):
    r, db = quantize_and_measure(tmp_path, chain_model(steps, **options))
    assert folded(r.plan) == expect
    assert {r.plan.decision(n).action for n in ("conv1", "conv2")} == {Action.INT8}  # the producer stays int8
    check_graph(r, expect)
    assert db > floor
    if len(expect) == len(steps) and not options:
        fused = fused_ops(r.output, tmp_path)
        assert fused["QLinearConv"] == 2  # Transpose: onnxruntime's own layout change for QLinearConv
        assert set(fused) <= {"QuantizeLinear", "QLinearConv", "DequantizeLinear", "Transpose"}


def test_folded_scale_goes_back_through_the_chain(tmp_path):
    """Plan for Mul(0.5) -> Add(0.25): the producer's Q gets scale s / 0.5 and zero point z + round(0.25 / s)
    where (s, z) is the final tensor's DequantizeLinear, computed here from the calibrated range."""
    r, _ = quantize_and_measure(tmp_path, chain_model([("Mul", 0.5), ("Add", 0.25)]))
    a = r.plan.activations["t1"]
    rng = r.report.calibration["ranges"]["t1"]
    lo, hi = min(rng["min"], 0.0), max(rng["max"], 0.0)
    s = (hi - lo) / 255
    assert a.scale == pytest.approx(s, rel=1e-6) and a.zero_point == round(-lo / s)
    assert a.q_scale == pytest.approx(s / 0.5, rel=1e-6)
    assert a.q_zero_point == a.zero_point + round(0.25 / a.scale)
    assert "c1" not in r.plan.activations and "t0" not in r.plan.activations  # nothing to quantize there


def test_nothing_folds_into_a_producer_that_stays_float(tmp_path):
    """conv1 excluded: its Relu has no int8 Q to fold into and must run as a Relu."""
    r, db = quantize_and_measure(tmp_path, chain_model([("Mul", 0.5), ("Relu",)]), exclude=("conv1",))
    assert r.plan.decision("conv1").action == Action.FLOAT and r.plan.decision("conv2").action == Action.INT8
    assert folded(r.plan) == set()
    check_graph(r, set())
    assert db > 31.5  # measured 34.7


# -- Clip bounds as attributes (opset < 11) ---------------------------------------------------------------


def test_clip_attributes_at_opset_10_fold(tmp_path):
    """Per tensor, the model stays at opset 10 and Clip keeps min/max as attributes."""
    r, db = quantize_and_measure(tmp_path, chain_model([("ClipAttr", 0.0, 6.0)], opset=10), per_channel=False)
    assert onnx.load(str(r.output)).opset_import[0].version == 10
    assert folded(r.plan) == {"clip0"}
    check_graph(r, {"clip0"})
    assert db > 28.5  # measured 31.6
    fused = fused_ops(r.output, tmp_path)
    assert fused["QLinearConv"] == 2 and "Clip" not in fused


@pytest.mark.parametrize("lo,floor", [(None, 26.5), (0.5, 29)], ids=["max-only", "min-0.5"])
def test_clip_attributes_without_a_zero_lower_bound_stay(tmp_path, lo, floor):
    r, db = quantize_and_measure(tmp_path, chain_model([("ClipAttr", lo, 6.0)], opset=10), per_channel=False)
    assert folded(r.plan) == set()
    assert ops(r.output)["Clip"] == 1
    assert db > floor  # measured max-only 29.4, min-0.5 32.1


def test_clip_attributes_at_opset_10_fold_when_upgraded_for_per_channel(tmp_path):
    """Per channel needs opset 13: onnx's converter turns Clip's attributes into Constant nodes, which must be
    lifted (constants clamp_low can read) and named (the plan is keyed by node name) for the Clip to fold."""
    r, db = quantize_and_measure(tmp_path, chain_model([("ClipAttr", 0.0, 6.0)], opset=10))
    assert onnx.load(str(r.output)).opset_import[0].version == 13
    assert folded(r.plan) == {"clip0"}
    assert "Constant" not in ops(r.output) and all(d.node for d in r.plan.nodes)
    check_graph(r, {"clip0"})
    assert db > 30  # measured 33.2, as with min/max given as inputs


# -- int8 symmetric activations: no saturation at 0, zero point fixed at 0 ---------------------------------

# Measured: relu 31.4 (-0.1 dB when the Relu is folded anyway), clip 31.9 (-0.1 folded), mul/div 31.9,
# mul-relu-mul 31.4, add 31.8.
SYMMETRIC = [
    ("relu", [("Relu",)], set(), 28.5),
    ("clip-0-6", [("Clip", 0.0, 6.0)], set(), 29),
    ("mul", [("Mul", 0.5)], {"mul0"}, 29),
    ("div", [("Div", 4.0)], {"div0"}, 29),
    ("mul-relu-mul", [("Mul", 2.0), ("Relu",), ("Mul", 0.25)], {"mul0"}, 28.5),
    ("add", [("Add", 0.75)], set(), 28.5),  # the zero point stays 0
]


@pytest.mark.parametrize("steps,expect,floor", [c[1:] for c in SYMMETRIC], ids=[c[0] for c in SYMMETRIC])
def test_symmetric_activations_fold_only_positive_scales(tmp_path, steps, expect, floor):
    r, db = quantize_and_measure(tmp_path, chain_model(steps), activation_symmetric=True)
    assert folded(r.plan) == expect
    assert {a.zero_point for a in r.plan.activations.values()} == {0}
    assert {a.q_zero_point for a in r.plan.activations.values()} <= {None, 0}
    check_graph(r, expect)
    assert db > floor


# -- other int8 producers ---------------------------------------------------------------------------------


def test_relu_folds_into_a_qlinear_add(tmp_path):
    """Residual block: conv1 -> conv2, Add(c1, c2) on int8 (QLinearAdd) -> Relu -> conv3."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array((rng.standard_normal(s) * k).astype(np.float32), n)
        for n, s, k in (("w1", (16, 3, 3, 3), 0.3), ("w2", (16, 16, 3, 3), 0.1), ("w3", (8, 16, 3, 3), 0.1))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c2"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w3"], ["y"], name="conv3", pads=[1, 1, 1, 1]),
    ]
    r, db = quantize_and_measure(tmp_path, _model(nodes, inits, {"y": [1, 8, 12, 12]}))
    assert r.plan.decision("add").action == Action.INT8
    assert folded(r.plan) == {"relu"}
    check_graph(r, {"relu"})
    assert db > 28  # measured 31.0
    fused = fused_ops(r.output, tmp_path)
    assert fused["QLinearConv"] == 3 and fused["QLinearAdd"] == 1 and "Relu" not in fused


def test_attention_style_scale_folds_into_a_matmul(tmp_path):
    """MatMul -> Div(8) -> Relu -> MatMul on [N, T, 64] tokens: the Div and Relu fold into QLinearMatMul's Q."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 128)) * 0.1).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((128, 10)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(8.0, np.float32), "eight"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Div", ["m1", "eight"], ["d"], name="div"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 64])]
    r, db = quantize_and_measure(tmp_path, _model(nodes, inits, {"y": ["N", "T", 10]}, inputs=x), shape=(2, 7, 64))
    assert folded(r.plan) == {"div", "relu"}
    check_graph(r, {"div", "relu"})
    assert db > 30  # measured 33.1
    fused = fused_ops(r.output, tmp_path)
    assert fused["QLinearMatMul"] == 1 and not {"MatMul", "Div", "Relu"} & fused.keys()


# -- regressions (from test_rewrite.py, with a float-model oracle) -----------------------------------------


def _hardswish():
    """HardSwish: Conv -> Add(+3) -> Clip(0, 6) -> Mul(c, .) -> Div(6)."""
    inits = [numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32), "w")]
    for n, v in (("three", 3), ("zero", 0), ("six", 6)):
        _const(inits, n, v)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["r"], name="clip"),
        helper.make_node("Mul", ["c", "r"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["y"], name="div"),
    ]
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    return _model(nodes, inits, {"y": [1, 16, 8, 8]}, inputs=x)


def test_clip_is_only_folded_into_a_producer_that_stays_int8(tmp_path):
    """Add(+3) could run as QLinearAdd with the Clip folded into its Q, but the Mul after it only feeds a float
    output, so Mul and then Add go back to float: the Clip must stay a real Clip (regression: it was dropped
    along with the Add; -22 dB)."""
    r, db = quantize_and_measure(tmp_path, _hardswish(), shape=(1, 3, 8, 8))
    assert r.plan.decision("conv").action == Action.INT8
    assert {d.node: d.action for d in r.plan.nodes if d.node != "conv"} == dict.fromkeys(
        ("add", "clip", "mul", "div"), Action.FLOAT
    )
    assert ops(r.output)["Clip"] == 1
    check_graph(r, set())
    assert db > 30.5  # measured 33.6


# -- fold.py units ---------------------------------------------------------------------------------------


def _index(nodes, inits, opset=17):
    """GraphIndex of a graph x -> nodes, with `lo_dyn` a second (non-constant) input."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("x", [5]), ("lo_dyn", []))]
    return GraphIndex(_model(nodes, inits, {nodes[-1].output[0]: [5]}, opset, inputs).graph)


CLAMPS = [
    ("relu", "Relu", 17, [], {}, 0.0),
    ("clip-inputs", "Clip", 17, [0.0, 6.0], {}, 0.0),
    ("clip-inputs-0.5", "Clip", 17, [0.5, 6.0], {}, 0.5),
    ("clip-inputs-negative", "Clip", 17, [-1.0, 6.0], {}, -1.0),
    ("clip-inputs-max-only", "Clip", 17, [None, 6.0], {}, None),
    ("clip-no-bounds", "Clip", 17, [], {}, None),
    ("clip-attrs", "Clip", 10, [], {"min": 0.0, "max": 6.0}, 0.0),
    ("clip-attrs-0.5", "Clip", 10, [], {"min": 0.5, "max": 6.0}, 0.5),
    ("clip-attrs-max-only", "Clip", 10, [], {"max": 6.0}, None),
]


@pytest.mark.parametrize("op,opset,bounds,attrs,expect", [c[1:] for c in CLAMPS], ids=[c[0] for c in CLAMPS])
def test_clamp_low(op, opset, bounds, attrs, expect):
    """fold.clamp_low against onnx.reference: what the op makes of a very negative input is its lower bound
    (the input itself when there is none)."""
    inits = []
    ins = ["x"] + ["" if b is None else _const(inits, f"b{i}", b) for i, b in enumerate(bounds)]
    node = helper.make_node(op, ins, ["y"], name="n", **attrs)
    idx = _index([node], inits, opset)
    very_negative = np.full(5, -1e30, np.float32)
    model = _model([node], inits, {"y": [5]}, opset, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])])
    (y,) = ReferenceEvaluator(model).run(None, {"x": very_negative})
    oracle = None if y[0] == -1e30 else float(y[0])
    assert oracle == expect  # the case table itself is right
    assert fold.clamp_low(node, idx) == expect


def test_clamp_low_of_a_computed_bound_is_unknown():
    inits = [numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    idx = _index([helper.make_node("Clip", ["x", "lo_dyn", "six"], ["y"], name="n")], inits)
    assert fold.clamp_low(idx.producer["y"], idx) is None


def _numpy_chain(steps, x):
    """The chain's float semantics, written out in numpy."""
    for op, k in steps:
        if op == "Relu":
            x = np.maximum(x, 0)
        elif op == "Div":
            x = x / np.float32(k)
        elif op == "Add":
            x = x + np.float32(k)
        else:  # Mul, MulFirst
            x = x * np.float32(k)
    return x


def _chain_nodes(steps):
    inits, nodes, t = [], [], "x"
    for i, (op, k) in enumerate(steps):
        ins = (
            [t]
            if op == "Relu"
            else ([_const(inits, f"k{i}", k), t] if op == "MulFirst" else [t, _const(inits, f"k{i}", k)])
        )
        nodes.append(helper.make_node("Mul" if op == "MulFirst" else op, ins, [f"t{i}"], name=f"n{i}"))
        t = f"t{i}"
    return nodes, inits


def _quant(v, s, z, qmin, qmax):
    """ONNX QuantizeLinear in numpy (float32 division, round half to even, saturate)."""
    return np.clip(np.rint(v.astype(np.float32) / np.float32(s)) + z, qmin, qmax)


Q_CHAINS = [
    ("mul", [("Mul", 0.5)]),
    ("mul-const-first", [("MulFirst", 3.0)]),
    ("div", [("Div", 4.0)]),
    ("add", [("Add", 0.3)]),
    ("add-negative", [("Add", -0.7)]),
    ("mul-add", [("Mul", 2.0), ("Add", -0.7)]),
    ("add-mul", [("Add", 0.2), ("Mul", 3.0)]),
    ("mul-add-relu", [("Mul", 0.5), ("Add", 0.25), ("Relu", None)]),
    ("div-add-mul", [("Div", 0.25), ("Add", 1.0), ("Mul", 0.5)]),
    ("mul-relu-mul", [("Mul", 2.0), ("Relu", None), ("Mul", 0.25)]),
]


@pytest.mark.parametrize("qmin,qmax", [(0, 255), (-128, 127)], ids=["uint8", "int8"])
@pytest.mark.parametrize("steps", [c[1] for c in Q_CHAINS], ids=[c[0] for c in Q_CHAINS])
def test_q_params_quantize_the_input_straight_into_the_final_tensors_integers(steps, qmin, qmax):
    """Q(x; q_params) == Q(chain(x); s, z), computed in numpy, where (s, z) covers the chain output's range.
    Exact through Mul/Div (up to float32 rounding at ties); Add's shift rounds, at most one step off."""
    nodes, inits = _chain_nodes(steps)
    idx = _index(nodes, inits)
    x = np.random.default_rng(6).standard_normal(20000).astype(np.float32) * 2
    t = _numpy_chain(steps, x)
    lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
    s = (hi - lo) / (qmax - qmin)
    z = int(np.rint(qmin - lo / s))
    got = fold.q_params(nodes, idx, s, z, qmin, qmax)
    assert got is not None
    qs, qz = got
    want = _quant(t, s, z, qmin, qmax)
    mine = _quant(x, qs, qz, qmin, qmax)
    diff = np.abs(want - mine)
    assert diff.max() <= 1
    if not any(op == "Add" for op, _ in steps):
        assert np.mean(diff > 0) < 1e-3
        assert qz == z


@pytest.mark.parametrize(
    "b,zero_point,expect",
    [(2.0, 128, None), (-2.0, 128, None), (1.0, 128, (0.01, 228)), (1.27, 128, (0.01, 255)), (-1.28, 128, (0.01, 0))],
    ids=["over", "under", "inside", "top-edge", "bottom-edge"],
)
def test_q_params_refuses_a_shift_out_of_the_integer_range(b, zero_point, expect):
    """Add(x, b) at scale 0.01: the zero point moves by b / 0.01; outside 0..255 there is no such Q."""
    nodes, inits = _chain_nodes([("Add", b)])
    got = fold.q_params(nodes, _index(nodes, inits), 0.01, zero_point, 0, 255)
    assert got == (expect if expect is None else (pytest.approx(expect[0]), expect[1]))


def test_clip_with_only_a_min_input_has_that_lower_bound():
    """Clip(x, 0) with no max input: a lower bound of 0, like Relu (opset >= 11 inputs)."""
    from onnx import helper, numpy_helper

    from qcli.core.fold import clamp_low
    from qcli.core.graph import GraphIndex

    node = helper.make_node("Clip", ["x", "lo"], ["y"])
    g = helper.make_graph([node], "g", [], [], [numpy_helper.from_array(np.array(0.0, np.float32), "lo")])
    assert clamp_low(node, GraphIndex(g)) == 0.0
