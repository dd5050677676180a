"""Int8 data movement (ops.PASSTHROUGH / NATIVE_INT8 / INT_OUTPUT, regions.py, passes/qdq.py): each op sits
between two convs, qcli quantizes the model, and onnxruntime's own optimized graph must run the op on
8-bit integers (its input and outputs typed uint8 there, by onnx shape inference: the Q/DQ around it were
dropped, or qcli wrote it on the integers). Oracles: onnxruntime's optimized graph, onnxruntime on the float
model, numpy for Pad's integers. Runs pin reduce_range=False and measure fidelity with exact_qdq=True, so
the figures are the same on every CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from checks import batches_of, run, sqnr_on
from models import model_of, quantize_files, save_with_data, vi
from onnx import TensorProto, helper, numpy_helper

from qcli import QuantConfig, quantize
from qcli.core.plan import Action
from qcli.passes.qdq import apply_w8a8

CONFIG = QuantConfig.of(reduce_range=False, min_macs_per_conversion=0, accuracy_guard=False)
INT8_TYPES = (TensorProto.UINT8, TensorProto.INT8)


def _w(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _conv_op_conv(op_nodes, mids: list[tuple[str, int, int]], c1: int, opset: int = 17, extra=None):
    """x[N,4,8,8] -> conv1 (4 -> c1, 3x3) -> op_nodes -> one 3x3 conv (-> 8 channels) per (tensor, channels,
    pads) in mids, writing y0, y1, ..."""
    rng = np.random.default_rng(3)
    inits = {"w1": _w(rng, c1, 4, 3, 3), "b1": _w(rng, c1, scale=0.1), **(extra or {})}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), *op_nodes]
    outputs = []
    for k, (t, c, pad) in enumerate(mids):
        inits[f"w2_{k}"] = _w(rng, 8, c, 3, 3, scale=0.2)
        nodes.append(helper.make_node("Conv", [t, f"w2_{k}"], [f"y{k}"], name=f"conv2_{k}", pads=[pad] * 4))
        outputs.append(vi(f"y{k}", ["N", 8, None, None]))
    m = model_of(nodes, [vi("x", ["N", 4, 8, 8])], outputs, inits, opset=opset)
    m.ir_version = 7 if opset < 15 else 8
    return m


def _optimized(path, tmp_path) -> onnx.ModelProto:
    """onnxruntime's optimized graph (QDQ rules applied, no layout changes), types filled in by shape inference."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "ort_extended.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.shape_inference.infer_shapes(onnx.load(so.optimized_model_filepath))


def _types(m: onnx.ModelProto) -> dict[str, int]:
    vis = list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)
    out = {v.name: v.type.tensor_type.elem_type for v in vis}
    out.update({t.name: t.data_type for t in m.graph.initializer})
    return out


def _runs_on_int8(path, tmp_path, op: str, int8_out: bool = True) -> tuple[onnx.NodeProto, onnx.ModelProto]:
    """The one `op` node of onnxruntime's optimized graph, and that graph. Its data input (and, int8_out, every
    output) is 8-bit: no DequantizeLinear feeds it, no QuantizeLinear reads it."""
    m = _optimized(path, tmp_path)
    types = _types(m)
    nodes = [n for n in m.graph.node if n.op_type == op]
    assert len(nodes) == 1, [n.op_type for n in m.graph.node]
    node = nodes[0]
    assert types.get(node.input[0]) in INT8_TYPES, f"{op} input is {types.get(node.input[0])}"
    if int8_out:
        assert all(types.get(o) in INT8_TYPES for o in node.output), [types.get(o) for o in node.output]
    return node, m


# -- ops onnxruntime runs on int8 once the Q/DQ around them are dropped ----------------------------------

CASES = {
    # op -> (op nodes, the convs' inputs (tensor, channels, pads), conv1's channels, extra initializers)
    "DepthToSpace": ([helper.make_node("DepthToSpace", ["c1"], ["m"], name="op", blocksize=2)], [("m", 4, 1)], 16),
    "Split": (
        [helper.make_node("Split", ["c1", "sp"], ["m0", "m1"], name="op", axis=1)],
        [("m0", 8, 1), ("m1", 8, 1)],
        16,
        {"sp": np.array([8, 8], np.int64)},
    ),
    "ReduceMax": ([helper.make_node("ReduceMax", ["c1"], ["m"], name="op", axes=[1])], [("m", 1, 1)], 16),
    "ReduceMin": ([helper.make_node("ReduceMin", ["c1"], ["m"], name="op", axes=[1])], [("m", 1, 1)], 16),
}
# Worst-output SQNR against the float model (dB, exact QDQ), floors 2 dB under what was measured: DepthToSpace
# 34.2, ReduceMax 37.0, ReduceMin 39.0, Split 34.2.
FLOORS = {"DepthToSpace": 32.0, "ReduceMax": 35.0, "ReduceMin": 37.0, "Split": 32.0}


@pytest.mark.parametrize("op", ["DepthToSpace", "ReduceMax", "ReduceMin", "Split"])
def test_data_movement_between_convs_runs_on_int8(tmp_path, op):
    nodes, mids, c1, *extra = CASES[op]
    save_with_data(tmp_path, _conv_op_conv(nodes, mids, c1, extra=extra[0] if extra else None), (2, 4, 8, 8))
    r = quantize_files(tmp_path, CONFIG)
    assert r.plan.decision("op").action == Action.PASSTHROUGH
    src = r.plan.activations["c1"]
    for t, *_ in mids:  # every output shares the input's scale and zero point
        assert (r.plan.activations[t].scale, r.plan.activations[t].zero_point) == (src.scale, src.zero_point)
    node, m = _runs_on_int8(r.output, tmp_path, op)
    readers = [n for n in m.graph.node if set(n.input) & set(node.output)]
    assert len(readers) == len(mids) and all(n.op_type == "QLinearConv" for n in readers)
    assert sqnr_on(tmp_path / "m.onnx", r.output, batches_of(tmp_path / "e"), exact_qdq=True) > FLOORS[op]


def test_split_rewrite_quantizes_every_output_with_its_inputs_parameters(tmp_path):
    """The rewrite alone (passes/qdq.py), on a plan where both outputs of a Split share the input's scale and
    zero point, m1 also read by a float Neg: each output's only reader is its QuantizeLinear (the Neg reads m1
    back through a DequantizeLinear), and onnxruntime replaces DQ -> Split -> Q, Q by a Split on uint8."""
    nodes, mids, c1, extra = CASES["Split"]
    m = _conv_op_conv([*nodes, helper.make_node("Neg", ["m1"], ["n1"], name="neg")], mids, c1, extra=extra)
    m.graph.output.append(vi("n1", ["N", 8, 8, 8]))
    save_with_data(tmp_path, m, (2, 4, 8, 8))
    plan = quantize(tmp_path / "m.onnx", CONFIG, calib=tmp_path / "c", dry_run=True).plan
    src = plan.activations["c1"]
    for t in ("m0", "m1"):
        plan.activations[t] = dataclasses.replace(src, tensor=t, share="c1")
    q, _ = apply_w8a8(onnx.load(str(tmp_path / "m.onnx")), plan)
    split = next(n for n in q.graph.node if n.op_type == "Split")
    readers = [n for n in q.graph.node if set(n.input) & set(split.output)]
    assert sorted(n.op_type for n in readers) == ["QuantizeLinear"] * 2
    onnx.save(q, tmp_path / "q.onnx")
    _runs_on_int8(tmp_path / "q.onnx", tmp_path, "Split")
    feeds = batches_of(tmp_path / "e")
    assert sqnr_on(tmp_path / "m.onnx", tmp_path / "q.onnx", feeds, exact_qdq=True) > 32.0  # measured 34.2 dB


def test_split_stays_int8_when_only_a_later_output_has_an_int8_reader(tmp_path):
    """Split -> (m0 -> Neg, float only; m1 -> conv): the Split still passes int8 through, for m1's conv (the
    region keeps a passthrough while any of its outputs has an int8 reader, not only the first)."""
    nodes = [
        helper.make_node("Split", ["c1", "sp"], ["m0", "m1"], name="op", axis=1),
        helper.make_node("Neg", ["m0"], ["n0"], name="neg"),
    ]
    m = _conv_op_conv(nodes, [("m1", 8, 1)], 16, extra={"sp": np.array([8, 8], np.int64)})
    m.graph.output.append(vi("n0", ["N", 8, 8, 8]))
    save_with_data(tmp_path, m, (2, 4, 8, 8))
    r = quantize_files(tmp_path, CONFIG)
    assert r.plan.decision("op").action == Action.PASSTHROUGH and r.plan.decision("neg").action == Action.FLOAT
    assert r.plan.decision("conv2_0").action == Action.INT8
    assert sqnr_on(tmp_path / "m.onnx", r.output, batches_of(tmp_path / "e"), exact_qdq=True) > 30.0  # 32.0 dB


# -- Pad: written on the integers by qcli -----------------------------------------------------------------

PADS = {
    # name -> (Pad attributes, pads, value or None, conv2's input channels, SQNR floor: 2 dB under measured)
    "reflect": ({"mode": "reflect"}, [0, 0, 1, 1, 0, 0, 1, 1], None, 8, 32.5),  # 34.8 dB
    "constant-0.25": ({"mode": "constant"}, [0, 0, 1, 1, 0, 0, 1, 1], 0.25, 8, 32.5),  # 34.4 dB
    "zero-on-channels": ({"mode": "constant"}, [0, 2, 0, 0, 0, 2, 0, 0], None, 12, 33.5),  # 35.7 dB
}


@pytest.mark.parametrize("case", sorted(PADS))
def test_pad_runs_on_the_integers_with_its_value_quantized(tmp_path, case):
    """conv1 (no clamp: the zero point is far from 0) -> Pad -> conv2. None of these Pads folds into conv2
    (fuse_pad.py), so qcli writes the Pad on the quantized tensor itself. Oracle for the integers: numpy's
    pad of the Pad's uint8 input with the value quantized here from the plan's scale and zero point."""
    attrs, pads, value, c, floor = PADS[case]
    extra = {"pads": np.array(pads, np.int64)}
    ins = ["c1", "pads"]
    if value is not None:
        extra["pv"] = np.array(value, np.float32)
        ins.append("pv")
    pad = helper.make_node("Pad", ins, ["m"], name="op", **attrs)
    save_with_data(tmp_path, _conv_op_conv([pad], [("m", c, 0)], 8, extra=extra), (2, 4, 8, 8))
    r = quantize_files(tmp_path, CONFIG)
    assert r.plan.decision("op").action == Action.PASSTHROUGH
    a = r.plan.activations["m"]
    assert a.share == "c1" and 0 < a.zero_point < 255  # a zero pad is not the integer 0 here
    q = onnx.load(str(r.output))
    node = next(n for n in q.graph.node if n.op_type == "Pad")
    producer = {o: n for n in q.graph.node for o in n.output}
    assert producer[node.input[0]].op_type == "QuantizeLinear"
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    want = np.clip(np.rint((value or 0.0) / np.float32(a.scale)) + a.zero_point, 0, 255)
    assert inits[node.input[2]].dtype == np.uint8 and int(inits[node.input[2]]) == int(want)
    _runs_on_int8(r.output, tmp_path, "Pad")
    # The integers: the written model with the Pad's input and output as extra uint8 outputs.
    probe = onnx.load(str(r.output))
    probe.graph.output.extend([vi(node.input[0], None, TensorProto.UINT8), vi(node.output[0], None, TensorProto.UINT8)])
    x = batches_of(tmp_path / "e")[0]
    *_, xq, yq = run(probe, x)
    spec = np.array(pads).reshape(2, -1).T
    kw = {"constant_values": int(want)} if attrs["mode"] == "constant" else {}
    np.testing.assert_array_equal(yq, np.pad(xq, spec, mode=attrs["mode"], **kw))
    assert sqnr_on(tmp_path / "m.onnx", r.output, batches_of(tmp_path / "e"), exact_qdq=True) > floor


def test_pad_before_opset_11_stays_float(tmp_path):
    """Pad-2 (opset 10, per-tensor: no upgrade to 13) has float types only: it stays float, and the written
    model passes onnx's full check (quantize() runs it)."""
    pad = helper.make_node("Pad", ["c1"], ["m"], name="op", mode="reflect", pads=[0, 0, 1, 1, 0, 0, 1, 1])
    save_with_data(tmp_path, _conv_op_conv([pad], [("m", 8, 0)], 8, opset=10), (2, 4, 8, 8))
    r = quantize_files(tmp_path, dataclasses.replace(CONFIG, int8=dataclasses.replace(CONFIG.int8, per_channel=False)))
    assert r.plan.decision("op").action == Action.FLOAT
    assert [d.action for d in r.plan.nodes if d.op_type == "Conv"] == [Action.INT8] * 2


# -- ArgMax: reads int8, writes indices -------------------------------------------------------------------


def test_argmax_reads_the_int8_tensor(tmp_path):
    """conv1 -> ArgMax over channels: the conv writes uint8 and onnxruntime drops the DequantizeLinear in
    front of the ArgMax (a positive scale keeps the order). Oracle: the float model's indices."""
    am = helper.make_node("ArgMax", ["c1"], ["y0"], name="op", axis=1, keepdims=0)
    rng = np.random.default_rng(3)
    inits = {"w1": _w(rng, 16, 4, 3, 3), "b1": _w(rng, 16, scale=0.1)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), am]
    m = model_of(nodes, [vi("x", ["N", 4, 8, 8])], [vi("y0", ["N", 8, 8], TensorProto.INT64)], inits)
    save_with_data(tmp_path, m, (2, 4, 8, 8))
    r = quantize_files(tmp_path, CONFIG)
    assert r.plan.decision("op").action == Action.INT8_OUT_FLOAT
    assert r.plan.decision("conv1").action == Action.INT8 and "y0" not in r.plan.activations
    _runs_on_int8(r.output, tmp_path, "ArgMax", int8_out=False)
    feeds = batches_of(tmp_path / "e")
    same = np.mean([np.mean(run(tmp_path / "m.onnx", f)[0] == run(r.output, f, exact_qdq=True)[0]) for f in feeds])
    assert same > 0.96  # measured 0.984 (6 of 384 positions differ: near-ties the quantization reorders)
