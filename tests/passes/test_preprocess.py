"""Preprocessing (passes/preprocess.py): Constant nodes lifted, Identity/Dropout removed, constant subgraphs
folded, BatchNorm folded into Conv. Oracle: onnxruntime on the original float model against the preprocessed
one (allclose), numpy for folded values; and W8A8 quantization of the result against the float model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from checks import ops, run, sqnr
from models import cnn, write_batches
from onnx import TensorProto, helper, numpy_helper

from qcli import QuantConfig, quantize
from qcli.core.plan import Action
from qcli.passes.preprocess import preprocess

QUANTIZED = (Action.INT8, Action.INT8_OUT_FLOAT)
# W8A8 runs pin reduce_range=False and measure with exact_qdq=True: the figures are then the same on every
# CPU (auto would pick 7-bit weights on x86 without VNNI: measured 4-9 dB lower on these models).


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name, value):
    return numpy_helper.from_array(value, name)


def _x(shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def op_counts(m: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in m.graph.node)


def same_outputs(ref: onnx.ModelProto, new: onnx.ModelProto, feeds: list[dict]) -> None:
    """Same graph output names, and the same values from onnxruntime on every feed."""
    assert [o.name for o in new.graph.output] == [o.name for o in ref.graph.output]
    onnx.checker.check_model(new, full_check=True)
    for feed in feeds:
        for a, b in zip(run(ref, feed), run(new, feed)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def inits_of(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


# ------------------------------------------------------------------------------------- Identity, Dropout


def test_identities_and_single_output_dropouts_are_removed_and_output_names_kept():
    """x -> Identity -> Identity -> MatMul -> Dropout -> Relu -> Identity -> y. The chain of Identities
    before the MatMul and the Dropout go; the Identity writing the graph output y stays (y keeps its name)."""
    w = (np.random.default_rng(0).standard_normal((8, 8)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["i1"], name="id1"),
        helper.make_node("Identity", ["i1"], ["i2"], name="id2"),
        helper.make_node("MatMul", ["i2", "w"], ["m"], name="mm"),
        helper.make_node("Dropout", ["m"], ["d"], name="drop"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"], name="id_out"),
    ]
    ref = _model(nodes, [_vi("x", ["N", 8])], [_vi("y", ["N", 8])], [_init("w", w)], opset=13)
    before = ref.SerializeToString()
    m, notes = preprocess(ref)
    assert ref.SerializeToString() == before  # the caller's model is not modified
    assert op_counts(m) == {"MatMul": 1, "Relu": 1, "Identity": 1}
    mm = next(n for n in m.graph.node if n.op_type == "MatMul")
    assert mm.input[0] == "x"  # the chain of renames resolved to the source
    assert [n.name for n in m.graph.node if n.op_type == "Identity"] == ["id_out"]
    assert notes  # the removal is recorded for the report
    same_outputs(ref, m, [{"x": _x((3, 8))}])


def test_dropout_whose_mask_is_used_stays():
    """Dropout(x) -> (d, mask); the mask is read (Cast -> Mul): the node cannot be removed."""
    nodes = [
        helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
        helper.make_node("Cast", ["mask"], ["mf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["d", "mf"], ["y"], name="mul"),
    ]
    ref = _model(nodes, [_vi("x", [2, 8])], [_vi("y", [2, 8])], [], opset=13)
    m, _ = preprocess(ref)
    assert op_counts(m)["Dropout"] == 1
    same_outputs(ref, m, [{"x": _x((2, 8))}])


def test_identity_read_inside_a_subgraph_stays():
    """An If branch reads the Identity's output t: removing the Identity would leave the branch dangling."""
    then_g = helper.make_graph([helper.make_node("Relu", ["t"], ["a"])], "then", [], [_vi("a", [2, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["t"], ["b"])], "else", [], [_vi("b", [2, 4])])
    nodes = [
        helper.make_node("Identity", ["x"], ["t"], name="id"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    ref = _model(nodes, [_vi("x", [2, 4]), _vi("cond", [], TensorProto.BOOL)], [_vi("y", [2, 4])], [])
    m, _ = preprocess(ref)
    assert op_counts(m)["Identity"] == 1
    same_outputs(ref, m, [{"x": _x((2, 4)), "cond": np.array(c)} for c in (True, False)])


# ---------------------------------------------------------------------- weights behind Transpose / Cast


def _weights_behind_ops():
    """Conv reads Cast(float16 weight); MatMul reads Transpose(weight stored [N, K]). Both are weights once
    folded: x[1,8,10,10] -> Conv -> Relu -> Flatten -> MatMul -> y[1, 32]."""
    rng = np.random.default_rng(0)
    w16 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float16)
    wt = (rng.standard_normal((32, 16 * 10 * 10)) * 0.03).astype(np.float32)  # [N, K]: transposed on use
    nodes = [
        helper.make_node("Cast", ["w16"], ["w_conv"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Transpose", ["wt"], ["w_mm"], name="transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["f", "w_mm"], ["y"], name="mm"),
    ]
    m = _model(nodes, [_vi("x", [1, 8, 10, 10])], [_vi("y", [1, 32])], [_init("w16", w16), _init("wt", wt)])
    return m, w16, wt


def test_weights_behind_transpose_and_cast_are_folded_into_initializers():
    ref, w16, wt = _weights_behind_ops()
    m, _ = preprocess(ref)
    assert op_counts(m) == {"Conv": 1, "Relu": 1, "Flatten": 1, "MatMul": 1}
    nodes = {n.name: n for n in m.graph.node}
    inits = inits_of(m)
    conv_w, mm_w = inits[nodes["conv"].input[1]], inits[nodes["mm"].input[1]]
    assert conv_w.dtype == np.float32 and mm_w.dtype == np.float32
    np.testing.assert_array_equal(conv_w, w16.astype(np.float32))
    np.testing.assert_array_equal(mm_w, wt.T)
    assert "w16" not in inits and "wt" not in inits  # the unused sources are dropped
    same_outputs(ref, m, [{"x": _x((1, 8, 10, 10))}])


def test_folded_weights_make_conv_and_matmul_int8_anchors(tmp_path):
    """After folding, W8A8 quantizes both (their weights as int8 initializers). Measured SQNR against the
    float model (exact QDQ) 38.8 dB."""
    ref, _, _ = _weights_behind_ops()
    onnx.save(ref, tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(1, 8, 10, 10)] * 4)
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(min_macs_per_conversion=0, reduce_range=False),
        calib=tmp_path / "c",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    assert r.plan.decision("conv").action == Action.INT8
    assert r.plan.decision("mm").action in QUANTIZED
    assert {(w.node, w.input_index) for w in r.plan.weights if w.role == "weight"} == {("conv", 1), ("mm", 1)}
    assert "Cast" not in ops(r.output) and "Transpose" not in ops(r.output)
    x = _x((2, 8, 10, 10), seed=11)[:1]
    assert sqnr(run(ref, {"x": x})[0], run(r.output, {"x": x}, exact_qdq=True)[0]) > 35


# ------------------------------------------------------------------------------------ BatchNorm folding


def test_batchnorm_folding_is_exact():
    """cnn(): bn1 folds into conv1; the new weight is w1 * gamma / sqrt(var + eps) per output channel and the
    new bias (b1 - mean) * k + beta (numpy); the outputs match the original's."""
    ref = cnn()
    m, notes = preprocess(ref)
    assert "BatchNormalization" not in op_counts(m)
    assert any("batchnorm" in n for n in notes)
    src = inits_of(ref)
    k = src["g"].astype(np.float64) / np.sqrt(src["var"].astype(np.float64) + 1e-5)
    conv1 = next(n for n in m.graph.node if n.name == "conv1")
    assert conv1.output[0] == "bn1"  # the conv now writes what the BatchNorm wrote
    got = inits_of(m)
    np.testing.assert_allclose(got[conv1.input[1]], src["w1"] * k[:, None, None, None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[conv1.input[2]], (src["b1"] - src["mu"]) * k + src["be"], rtol=1e-6, atol=1e-6)
    same_outputs(ref, m, [{"x": _x((2, 3, 16, 16))}])
    kept, _ = preprocess(ref, fold_batchnorm=False)
    assert op_counts(kept)["BatchNormalization"] == 1


def test_batchnorm_after_a_conv_whose_output_is_also_read_elsewhere_is_not_folded():
    """c1 feeds both the BatchNorm and an Add: folding would change what the Add reads."""
    rng = np.random.default_rng(5)
    inits = [
        _init("w", (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)),
        *(_init(k, (rng.random(4) + 0.5).astype(np.float32)) for k in ("g", "be", "mu", "var")),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"], name="bn"),
        helper.make_node("Add", ["bn", "c1"], ["y"], name="add"),
    ]
    ref = _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 4, 6, 6])], inits)
    m, _ = preprocess(ref)
    assert op_counts(m)["BatchNormalization"] == 1
    same_outputs(ref, m, [{"x": _x((1, 3, 6, 6))}])


def _bn_model(taken: str, where: str):
    """conv1(x, w1, b1) -> c1 -> BatchNorm -> bn -> Relu -> r -> conv2 -> y, plus conv3 sharing w1 with conv1
    (its weight must survive the fold); epsilon 0.01, not the default. `taken` is a name qcli might choose
    for the folded weight/bias: where="weight": conv2's weight is called `taken`; where="subgraph": an If
    branch defines a tensor `taken` (and reads r), conv2's weight is plain w2."""
    rng = np.random.default_rng(4)
    c = 8
    inits = {
        "w1": (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32),
        "b1": (rng.standard_normal(c) * 0.1).astype(np.float32),
        "g": (1 + 0.5 * rng.standard_normal(c)).astype(np.float32),
        "be": (0.2 * rng.standard_normal(c)).astype(np.float32),
        "mu": (0.2 * rng.standard_normal(c)).astype(np.float32),
        "var": (0.5 + rng.random(c)).astype(np.float32),
        "w2": (rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32),
    }
    conv2_w = taken if where == "weight" else "w2"
    if where == "weight":
        inits[taken] = inits.pop("w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"], name="bn1", epsilon=0.01),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", conv2_w], ["y"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w1"], ["z"], name="conv3", pads=[1, 1, 1, 1]),
    ]
    inputs, outputs = [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, c, 8, 8]), _vi("z", [1, c, 8, 8])]
    if where == "subgraph":
        then_g = helper.make_graph(
            [helper.make_node("Neg", ["r"], [taken]), helper.make_node("Sigmoid", [taken], ["t"])],
            "then",
            [],
            [_vi("t", [1, c, 8, 8])],
        )
        else_g = helper.make_graph([helper.make_node("Abs", ["r"], ["e"])], "else", [], [_vi("e", [1, c, 8, 8])])
        nodes.append(helper.make_node("If", ["cond"], ["s"], name="if", then_branch=then_g, else_branch=else_g))
        inputs.append(_vi("cond", [], TensorProto.BOOL))
        outputs.append(_vi("s", [1, c, 8, 8]))
    return _model(nodes, inputs, outputs, [_init(k, v) for k, v in inits.items()])


COLLISIONS = {
    "bn-output-weight": ("bn_w", "weight"),
    "bn-output-bias": ("bn_b", "weight"),
    "conv-output-weight": ("c1_w", "weight"),
    "conv-output-bias": ("c1_b", "weight"),
    "bn-output-in-subgraph": ("bn_w", "subgraph"),
    "conv-output-in-subgraph": ("c1_w", "subgraph"),
}


def _feeds(m, n=2):
    needs_cond = any(i.name == "cond" for i in m.graph.input)
    return [
        {"x": _x((1, 3, 8, 8), seed=20 + i), **({"cond": np.array(i % 2 == 0)} if needs_cond else {})} for i in range(n)
    ]


@pytest.mark.parametrize("taken,where", COLLISIONS.values(), ids=COLLISIONS.keys())
def test_batchnorm_folding_never_reuses_a_taken_name(taken, where):
    """Regression: the folded weight was named `<bn output>_w` unchecked; when another Conv's weight (or a
    tensor in a subgraph) already had that name the model silently computed something else (SQNR -2.9 dB)."""
    ref = _bn_model(taken, where)
    m, _ = preprocess(ref)
    assert "BatchNormalization" not in op_counts(m)
    names = [t.name for t in m.graph.initializer]
    assert len(names) == len(set(names))
    if where == "weight":
        np.testing.assert_array_equal(inits_of(m)[taken], inits_of(ref)[taken])  # conv2's weight untouched
    conv1 = next(n for n in m.graph.node if n.name == "conv1")
    assert not set(conv1.input[1:]) & {taken, "w1", "b1"}  # new names for the folded weight and bias
    np.testing.assert_array_equal(inits_of(m)["w1"], inits_of(ref)["w1"])  # conv3 still reads the original
    same_outputs(ref, m, _feeds(ref, 4))


@pytest.mark.parametrize("taken,where", [("bn_w", "weight"), ("bn_w", "subgraph")], ids=["weight", "subgraph"])
def test_w8a8_of_a_model_with_a_taken_fold_name_stays_faithful(tmp_path, taken, where):
    """End to end: measured worst-output SQNR against the float model (exact QDQ) 35.3 dB (weight) and
    35.3 dB (subgraph); with the old naming the output was -2.9 dB."""
    ref = _bn_model(taken, where)
    onnx.save(ref, tmp_path / "m.onnx")
    feeds = _feeds(ref, 4)
    (tmp_path / "c").mkdir()
    for i, f in enumerate(feeds):
        np.savez(tmp_path / "c" / f"{i}.npz", **f)
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(min_macs_per_conversion=0, reduce_range=False),
        calib=tmp_path / "c",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    assert r.plan.decision("conv1").action in QUANTIZED and r.plan.decision("conv2").action in QUANTIZED
    for f in feeds:
        for a, b in zip(run(ref, f), run(r.output, f, exact_qdq=True)):
            assert sqnr(a, b) > 32


# -------------------------------------------------------------------------------------- Constant nodes


def test_constant_nodes_become_initializers():
    """value (a tensor), value_float, value_floats, value_int and value_ints Constants are lifted (values and
    dtypes as numpy reads them); a Constant that is itself a graph output stays a node."""
    w = (np.random.default_rng(0).standard_normal((6, 4)) * 0.5).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["cw"], value=_init("cw", w)),
        helper.make_node("Constant", [], ["cf"], value_float=0.5),
        helper.make_node("Constant", [], ["cfs"], value_floats=[1.0, -2.0, 3.0, 0.25]),
        helper.make_node("Constant", [], ["ci"], value_int=1),
        helper.make_node("Constant", [], ["cis"], value_ints=[-1, 2, 2]),
        helper.make_node("Constant", [], ["kept"], value_floats=[7.0]),
        helper.make_node("MatMul", ["x", "cw"], ["m"], name="mm"),
        helper.make_node("Mul", ["m", "cf"], ["s"], name="mul"),
        helper.make_node("Add", ["s", "cfs"], ["a"], name="add"),
        helper.make_node("Reshape", ["a", "cis"], ["y"], name="reshape"),
        helper.make_node("Unsqueeze", ["y", "ci"], ["u"], name="unsq"),
    ]
    ref = _model(
        nodes,
        [_vi("x", [2, 6])],
        [_vi("y", [2, 2, 2]), _vi("u", [2, 1, 2, 2]), _vi("kept", [1])],
        [],
    )
    m, notes = preprocess(ref)
    assert [n.output[0] for n in m.graph.node if n.op_type == "Constant"] == ["kept"]
    got = inits_of(m)
    np.testing.assert_array_equal(got["cw"], w)
    assert got["cf"].dtype == np.float32 and got["cf"] == np.float32(0.5)
    np.testing.assert_array_equal(got["cfs"], np.array([1.0, -2.0, 3.0, 0.25], np.float32))
    assert got["ci"].dtype == np.int64 and got["ci"] == 1
    assert got["cis"].dtype == np.int64 and got["cis"].tolist() == [-1, 2, 2]
    assert any("constant" in n for n in notes)
    same_outputs(ref, m, [{"x": _x((2, 6))}])


def test_opset11_constant_node_weights_are_lifted_and_opset_upgraded(tmp_path):
    """cnn() at opset 11 with every weight in a Constant node: W8A8 lifts them, upgrades to opset 13 (per-
    channel Q/DQ), quantizes the three convs. Measured SQNR against the float model (exact QDQ) 42.0 dB."""
    ref = cnn(opset=11, constants_as_nodes=True)
    onnx.save(ref, tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(1, 3, 16, 16)] * 3)
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(reduce_range=False),
        calib=tmp_path / "c",
        out=tmp_path / "q.onnx",
        latency_runs=2,
    )
    q = onnx.load(str(r.output))
    assert q.opset_import[0].version == 13
    counts = ops(r.output)
    assert "Constant" not in counts and "BatchNormalization" not in counts and counts["Conv"] == 3
    assert {r.plan.decision(f"conv{i}").action for i in (1, 2, 3)} == {Action.INT8}
    x = _x((2, 3, 16, 16))
    assert sqnr(run(ref, {"x": x})[0], run(r.output, {"x": x}, exact_qdq=True)[0]) > 38
