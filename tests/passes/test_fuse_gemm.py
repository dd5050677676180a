"""MatMul + bias Add -> Gemm (qcli/passes/fuse_gemm.py): exact, refused where Gemm cannot take it, and the reason
it exists: a quantized classifier head runs as onnxruntime's QGemm instead of a float Gemm that dequantizes its
weight on every run."""

import numpy as np
import pytest
from checks import fused_ops, ops, run
from models import model_of, quantize_files, save_with_data, vi
from onnx import helper

from qcli import QuantConfig
from qcli.core.plan import Action
from qcli.passes.preprocess import preprocess


def _head(k=128, hidden=256, classes=10, x_shape=("N", 128), bias_shape=None, seed=0):
    """x -> MatMul(w1) -> Add(b1) -> Relu -> MatMul(w2) -> Add(b2) -> y."""
    r = np.random.default_rng(seed)
    inits = {
        "w1": (r.standard_normal((k, hidden)) / np.sqrt(k)).astype(np.float32),
        "b1": r.standard_normal(bias_shape or (hidden,)).astype(np.float32) * 0.1,
        "w2": (r.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32),
        "b2": r.standard_normal((classes,)).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["b1", "m1"], ["a1"], name="add1"),  # bias first: either order is fused
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="add2"),
    ]
    out_shape = None if x_shape is None else [*x_shape[:-1], classes]
    return model_of(nodes, [vi("x", x_shape and list(x_shape))], [vi("y", out_shape)], inits)


def test_fused_into_gemm_with_the_same_outputs():
    m = _head(bias_shape=(1, 256))
    x = np.random.default_rng(1).standard_normal((5, 128)).astype(np.float32)
    want = run(m, {"x": x}, exact_qdq=True)[0]
    fused, notes = preprocess(m)
    assert [(n.op_type, n.name, list(n.input)) for n in fused.graph.node] == [
        ("Gemm", "mm1", ["x", "w1", "b1"]),
        ("Relu", "relu1", ["a1"]),
        ("Gemm", "mm2", ["r1", "w2", "b2"]),
    ]
    assert any("2 MatMul(s) with a bias Add written as Gemm" in n for n in notes), notes
    np.testing.assert_allclose(run(fused, {"x": x}, exact_qdq=True)[0], want, rtol=1e-5, atol=1e-6)


def test_not_fused_where_gemm_cannot_compute_it():
    # A 3-D activation (Gemm's A is 2-D), an unknown rank, a bias of another shape, a MatMul read twice.
    for m in (_head(x_shape=("N", "T", 128)), _head(x_shape=None)):
        fused, notes = preprocess(m)
        assert "Gemm" not in ops_of(fused), notes
    kinds = [(n.op_type, n.name) for n in preprocess(_head(bias_shape=(5, 256)))[0].graph.node]
    assert ("MatMul", "mm1") in kinds and ("Gemm", "mm2") in kinds  # [5, 256] + [N, 256]: a 2-D input for mm2
    m = _head()
    m.graph.node.append(helper.make_node("Identity", ["m1"], ["extra"], name="tap"))
    m.graph.output.append(vi("extra", ["N", 256]))
    kinds = [(n.op_type, n.name) for n in preprocess(m)[0].graph.node]
    assert ("MatMul", "mm1") in kinds and ("Gemm", "mm2") in kinds


def ops_of(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_quantized_head_runs_as_one_integer_kernel(tmp_path):
    """Without the fusion the int8 head MatMul writes float into the bias Add; onnxruntime fuses MatMul + Add
    into a float Gemm first and dequantizes the weight on every run (left: DequantizeLinear + Gemm)."""
    m = save_with_data(tmp_path, _head(), (8, 128))
    r = quantize_files(tmp_path, QuantConfig.of(accuracy_guard=False))
    assert ops(tmp_path / "q.onnx").get("Gemm") == 2
    fused = fused_ops(tmp_path / "q.onnx", tmp_path)
    assert fused.get("QGemm") == 2 and "Gemm" not in fused and "MatMul" not in fused, fused
    assert "DequantizeLinear" not in fused or fused["DequantizeLinear"] == 1, fused  # only the float output's
    assert r.report.fidelity[0].sqnr_db > 30, r.report.fidelity
    assert m.exists()


@pytest.mark.parametrize(("exclude", "float_nodes"), [(("MatMul",), {"mm1", "mm2"}), (("mm2",), {"mm2"})])
def test_an_excluded_matmul_is_not_fused_so_the_exclusion_holds(tmp_path, exclude, float_nodes):
    """--exclude names nodes as the input has them: a MatMul excluded by op type or by name stays a float
    MatMul + Add (fused into a Gemm it would no longer match 'MatMul', and be quantized)."""
    save_with_data(tmp_path, _head(), (8, 128))
    r = quantize_files(tmp_path, QuantConfig.of(accuracy_guard=False, exclude=exclude))
    decisions = {d.node: d for d in r.plan.nodes}
    assert {n for n in ("mm1", "mm2") if decisions[n].action == Action.FLOAT} == float_nodes
    assert all(decisions[n].op_type == "MatMul" for n in float_nodes)
    assert not r.report.warnings or all("matches no node" not in w for w in r.report.warnings), r.report.warnings
    assert ops(tmp_path / "q.onnx").get("MatMul", 0) == len(float_nodes)
