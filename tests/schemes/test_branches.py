"""Quantizing inside If branches (schemes/branches.py, passes/branches.py): each branch quantized as a model of
its own on the calibration batches that take it, its Q/DQ inside the body (where onnxruntime fuses them), names
unique across scopes, outer weights quantized where they are used and the float copies dropped; a branch the data
never takes quantized without data, with that reason; the plan replays byte for byte."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from checks import sqnr
from models import branchy, crnn

from qcli import QuantConfig, quantize
from qcli.core.graph import subgraphs
from qcli.passes.branches import free_names

STATIC = QuantConfig.of(placement="static")


def _batches(folder, signs, seed):
    folder.mkdir()
    r = np.random.default_rng(seed)
    for i, s in enumerate(signs):
        np.save(folder / f"b{i:02d}.npy", (r.standard_normal((2, 3, 8, 8)) + 0.5 * s).astype(np.float32))
    return folder


def _walk(g, depth=0):
    for n in g.node:
        yield n, depth
        for s in subgraphs(n):
            yield from _walk(s, depth + 1)


def _initializers(g, depth=0):
    yield from ((t, depth) for t in g.initializer)
    for n in g.node:
        for s in subgraphs(n):
            yield from _initializers(s, depth + 1)


def _optimized(path, tmp_path) -> Counter:
    """Op types (depth > 0: inside a subgraph) in onnxruntime's optimized graph."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter((n.op_type, d > 0) for n, d in _walk(onnx.load(tmp_path / "optimized.onnx").graph))


@pytest.mark.parametrize("const_weights", [True, False], ids=["constant-nodes", "outer-initializers"])
def test_both_branches_are_quantized_inside_their_bodies(tmp_path, const_weights):
    onnx.save(branchy(const_weights), tmp_path / "m.onnx")
    calib = _batches(tmp_path / "c", [1, -1] * 6, seed=1)
    held = _batches(tmp_path / "e", [1, -1, 1, -1], seed=7)
    r = quantize(tmp_path / "m.onnx", STATIC, calib, tmp_path / "q.onnx", held, latency_runs=2)
    assert set(r.plan.branches) == {"branch/then_branch", "branch/else_branch"}
    for key, plan in r.plan.branches.items():
        conv = [d for d in plan.nodes if d.op_type == "Conv"]
        assert conv and all(d.action.value == "int8" for d in conv), key
    assert r.report.status != "not-quantized"
    q = onnx.load(tmp_path / "q.onnx")
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q.graph.node)  # all inside
    floats = [t.name for t in q.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1]
    assert not floats, floats  # the outer float weights are gone (equal small tensors of both branches shared)
    names = [o for n, _ in _walk(q.graph) for o in n.output if o]
    assert len(names) == len(set(names)), "a name is defined twice across scopes"
    fused = _optimized(tmp_path / "q.onnx", tmp_path)
    assert fused[("QLinearConv", True)] == 4 and not fused[("Conv", True)]
    for x in [np.load(f) for f in sorted(held.glob("*.npy"))]:
        ref = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
        got = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": x})[0]
        assert sqnr(ref, got) > 25  # measured 30-36 dB


def test_a_branch_the_data_never_takes_is_quantized_without_data(tmp_path):
    onnx.save(branchy(), tmp_path / "m.onnx")
    calib = _batches(tmp_path / "c", [1] * 8, seed=1)  # only the then branch
    r = quantize(tmp_path / "m.onnx", STATIC, calib, tmp_path / "q.onnx", latency_runs=2)
    assert r.plan.branches["branch/then_branch"].scheme == "w8a8"
    never = r.plan.branches["branch/else_branch"]
    assert never.scheme == "dynamic" and all(d.action.value == "float" for d in never.nodes if d.op_type == "Conv")
    assert any("else_branch: never taken on the calibration data" in n for n in r.report.notes)


def test_an_lstm_in_branches_reading_outer_weights_runs_on_dynamicquantizelstm(tmp_path):
    """Silero VAD's op15 export: the LSTM sits in both branches of an If, W and R an Unsqueeze of outer
    initializers; each branch quantizes them, and the two equal int8 copies are stored once."""
    m = crnn()
    g = m.graph
    lstm = next(n for n in g.node if n.op_type == "LSTM")
    inits = {t.name: t for t in g.initializer}
    for w in ("W", "R"):  # stored 2-D outside, unsqueezed inside the branch
        a = onnx.numpy_helper.to_array(inits[w])[0]
        inits[w].CopyFrom(onnx.numpy_helper.from_array(a, w))
    g.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "ax0"))

    def body(tag):
        nodes = [
            onnx.helper.make_node("Unsqueeze", ["W", "ax0"], [f"{tag}W"], name=f"{tag}uw"),
            onnx.helper.make_node("Unsqueeze", ["R", "ax0"], [f"{tag}R"], name=f"{tag}ur"),
            onnx.helper.make_node(
                "LSTM", ["seq", f"{tag}W", f"{tag}R", "B"], [f"{tag}Y", ""], name=f"{tag}lstm", hidden_size=96
            ),
        ]
        return onnx.helper.make_graph(nodes, tag, [], [onnx.helper.make_tensor_value_info(f"{tag}Y", 1, None)])

    at = list(g.node).index(lstm)
    g.node.remove(lstm)
    g.node.insert(
        at, onnx.helper.make_node("If", ["cond"], ["Y"], name="rnn_if", then_branch=body("t"), else_branch=body("e"))
    )
    g.node.insert(at, onnx.helper.make_node("Greater", ["one", "zero"], ["cond"], name="always"))
    g.initializer.extend(
        [onnx.numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("one", 1), ("zero", 0))]
    )
    onnx.save(m, tmp_path / "m.onnx")
    calib = tmp_path / "c"
    calib.mkdir()
    for i in range(8):
        np.save(calib / f"b{i}.npy", np.random.default_rng(i).standard_normal((2, 1, 16, 20)).astype(np.float32))
    r = quantize(tmp_path / "m.onnx", STATIC, calib, tmp_path / "q.onnx", latency_runs=2)
    q = onnx.load(tmp_path / "q.onnx")
    ops = Counter(n.op_type for n, d in _walk(q.graph) if d > 0)
    assert ops["DynamicQuantizeLSTM"] == 2 and not ops["LSTM"]
    assert "W" not in {t.name for t in q.graph.initializer}  # the float weights dropped
    big = [
        (d, t.name)
        for t, d in _initializers(q.graph)
        if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) > 1000
    ]
    assert [d for d, _ in big] == [0, 0] and all(n.startswith("rnn_if/shared") for _, n in big)  # W, R: once
    assert r.plan.branches["rnn_if/else_branch"].scheme == "dynamic"  # never taken: no data needed for it


def test_free_names_are_what_a_graph_reads_from_outside():
    inner = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "outer2"], ["b"])],
        "inner",
        [],
        [onnx.helper.make_tensor_value_info("b", 1, None)],
    )
    g = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Relu", ["outer1"], ["a"]),
            onnx.helper.make_node("If", ["c"], ["d"], then_branch=inner, else_branch=inner),
        ],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("d", 1, None)],
    )
    assert free_names(g) == ["outer1", "c", "outer2"]


def test_dry_run_names_the_branches_and_does_not_say_nothing_is_quantized(tmp_path):
    onnx.save(branchy(), tmp_path / "m.onnx")
    calib = _batches(tmp_path / "c", [1, -1] * 3, seed=1)
    r = quantize(tmp_path / "m.onnx", STATIC, calib, dry_run=True)
    assert not any(w.startswith("nothing was quantized") for w in r.report.warnings)
    assert sum("quantized as a model of its own when the model is written" in n for n in r.report.notes) == 2
