"""Graph helpers (qcli/graph.py): node naming, fresh names, all_names and GraphIndex.escapes, subgraphs
included. Oracle: names collected here by walking the protobuf independently of qcli."""

from __future__ import annotations

import numpy as np
import pytest
from models import mlp
from onnx import GraphProto, TensorProto, helper, numpy_helper

from qcli.core.graph import GraphIndex, Namer, all_names, name_nodes


def _vi(name, shape=(2,)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _chain(names: list[str]) -> GraphProto:
    """x -> Relu -> Relu -> ... -> y, the nodes named as given."""
    tensors = ["x"] + [f"t{i}" for i in range(len(names) - 1)] + ["y"]
    nodes = [helper.make_node("Relu", [a], [b], name=n) for n, a, b in zip(names, tensors, tensors[1:])]
    return helper.make_graph(nodes, "chain", [_vi("x")], [_vi("y")])


def _walk_names(g: GraphProto) -> set[str]:
    """Every name in g and its subgraphs, walked here (the oracle for all_names / Namer)."""
    out = {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output, *g.value_info)}
    for n in g.node:
        out |= {n.name, *n.input, *n.output}
        for a in n.attribute:
            for sub in [a.g] if a.type == a.GRAPH else list(a.graphs):
                out |= _walk_names(sub)
    return out - {""}


def _nested() -> GraphProto:
    """Main graph: c = Relu(x); If(cond) whose then-branch holds a Loop whose body reads the outer `c`
    and defines s0, s1 and a local initializer `k`; the else-branch reads `d`. `e` is only read in the
    main graph; `y` is a graph output. A custom-domain node holds a list of graphs (a GRAPHS attribute) that
    read the outer `f` and define `u0`, `u1`."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["c", "k"], ["s0"], name="body_add"),
            helper.make_node("Identity", ["s0"], ["s1"], name="body_id"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("s1")],
        [numpy_helper.from_array(np.ones(2, np.float32), "k")],
    )
    then_g = helper.make_graph(
        [helper.make_node("Loop", ["trip", ""], ["scan_out"], name="loop", body=body)],
        "then",
        [],
        [_vi("scan_out", (1, 2))],
    )
    else_g = helper.make_graph([helper.make_node("Neg", ["d"], ["neg"], name="neg")], "else", [], [_vi("neg")])
    listed = [
        helper.make_graph([helper.make_node("Relu", ["f"], ["u0"])], "g0", [], [_vi("u0")]),
        helper.make_graph([helper.make_node("Abs", ["f"], ["u1"])], "g1", [], [_vi("u1")]),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["f"], name="relu_f"),
        helper.make_node("Switch", ["x"], ["w"], name="switch", domain="test", branches=listed),
        helper.make_node("Relu", ["x"], ["c"], name="relu"),
        helper.make_node("Relu", ["x"], ["d"], name="relu_d"),
        helper.make_node("Relu", ["x"], ["e"], name="relu_e"),
        helper.make_node("Add", ["e", "e"], ["y"], name="add"),
        helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(
        nodes,
        "nested",
        [_vi("x"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [_vi("y"), _vi("z", (1, 2)), _vi("w")],
        [numpy_helper.from_array(np.array(1, np.int64), "trip")],
    )
    g.value_info.append(_vi("annotated"))  # a name only declared in value_info is taken too
    return g


def test_name_nodes_fills_blanks_and_keeps_given_names():
    g = _chain(["Relu_1", "", ""])
    assert name_nodes(g) == 2
    names = [n.name for n in g.node]
    assert names[0] == "Relu_1" and len(set(names)) == 3 and all(names)
    tensors = {"x", "y", "t0", "t1"}
    assert not set(names) & tensors  # node names never take a tensor's name either


def test_name_nodes_renames_duplicates_only():
    g = _chain(["a", "a", "b", "a"])
    assert name_nodes(g) == 2
    names = [n.name for n in g.node]
    assert names[0] == "a" and names[2] == "b" and len(set(names)) == 4


def test_name_nodes_leaves_unique_names_untouched():
    g = _chain(["conv", "relu", "pool"])
    before = g.SerializeToString()
    assert name_nodes(g) == 0
    assert g.SerializeToString() == before


def test_name_nodes_avoids_names_used_in_subgraphs():
    """An unnamed Relu must not take a name that a tensor or node inside an If branch already has."""
    branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["Relu"], name="Relu_1"), helper.make_node("Abs", ["Relu"], ["b"])],
        "branch",
        [],
        [_vi("b")],
    )
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch),
        ],
        "g",
        [_vi("x"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [_vi("y"), _vi("r")],
    )
    taken = _walk_names(g)
    assert name_nodes(g) == 1
    assert g.node[0].name and g.node[0].name not in taken


def test_all_names_covers_subgraphs_at_every_depth():
    g = _nested()
    names = all_names(g)
    assert names == _walk_names(g)
    assert {"s0", "s1", "k", "body_add", "cond_out", "neg", "scan_out"} <= names  # Loop inside If, else branch
    assert {"u0", "u1"} <= names and "annotated" in names  # a GRAPHS attribute; value_info
    assert "" not in names


def test_namer_never_returns_a_name_used_anywhere():
    g = _nested()
    taken = _walk_names(g)
    namer = Namer(g)
    fresh = [namer("s") for _ in range(5)]
    assert fresh[0] == "s2"  # s0 and s1 live in the Loop body inside the If branch
    assert len(set(fresh)) == 5 and not set(fresh) & taken
    assert namer.fresh("s0") == "s0_1" and namer.fresh("s0") == "s0_2"
    assert namer.fresh("brand_new") == "brand_new"
    assert namer.fresh("brand_new") == "brand_new_1"  # what it returned is taken from then on
    prefixed = Namer(g, prefix="q_")
    assert prefixed("c").startswith("q_c") and prefixed("c") not in taken


def test_escapes_graph_outputs_and_tensors_read_in_subgraphs():
    idx = GraphIndex(_nested())
    assert idx.escapes("y")  # a graph output
    assert idx.escapes("c")  # read two levels down, in the Loop body inside the then-branch
    assert idx.escapes("d")  # read in the else-branch
    assert idx.escapes("f")  # read in one graph of a GRAPHS attribute
    assert not idx.escapes("e")  # read only by main-graph nodes
    assert not idx.escapes("x")
    assert {n.name for n in idx.consumers["e"]} == {"add"}
    assert idx.producer["c"].name == "relu" and idx.is_const("trip") and not idx.is_float_const("trip")


@pytest.mark.parametrize("ir, as_input", [(3, True), (8, False)])
def test_add_initializer_lists_it_as_a_graph_input_only_before_ir4(ir, as_input):
    from qcli.core.graph import add_initializer

    m = mlp()
    m.ir_version = ir
    t = add_initializer(m, "extra", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert t is m.graph.initializer[-1] and t.name == "extra" and list(t.dims) == [2, 3]
    inputs = {v.name: v for v in m.graph.input}
    assert ("extra" in inputs) == as_input
    if as_input:
        assert [d.dim_value for d in inputs["extra"].type.tensor_type.shape.dim] == [2, 3]
