"""Make a float model quantizable: weights as initializers, constants folded, BatchNorm folded into Conv."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcli.core.graph import GraphIndex, Namer, add_initializer, attr, name_nodes, subgraphs
from qcli.io.model_io import ensure_opset
from qcli.passes.fuse_gemm import fuse_matmul_add
from qcli.passes.fuse_pad import fuse_pads

# Nodes evaluated offline when all their inputs are constant. Random and control-flow ops are never folded.
_NO_FOLD = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "QuantizeLinear",
    "DequantizeLinear",
}
_MAX_FOLD_BYTES = 64 << 20


def preprocess(
    model: ModelProto, fold_batchnorm: bool = True, inplace: bool = False, keep=lambda node: False
) -> tuple[ModelProto, list[str]]:
    """`keep(node)`: nodes the user named (--exclude, overrides file) stay as they are, not fused into others."""
    m = model if inplace else ModelProto()
    if not inplace:
        m.CopyFrom(model)
    notes: list[str] = []
    for step, enabled in (
        (lift_constants, True),
        (remove_identities, True),
        (fold_constants, True),
        (fold_pads, True),
        (lambda m: fuse_bias_matmuls(m, keep), True),
        (fold_batchnorm_into_conv, fold_batchnorm),
    ):
        if enabled:
            n = step(m)
            if isinstance(n, list):
                notes += n
            elif n:
                notes.append(f"{step.__name__.replace('_', ' ')}: {n}")
    return m, notes


def fold_pads(m: ModelProto) -> list[str]:
    """Zero constant Pads into the Conv / pool that reads them (see fuse_pad.py): one note for the folds,
    one per Pad kept in front of a Conv / pool."""
    done = fuse_pads(m)
    notes = list(done.kept)
    if done.folded:
        drop_unused_initializers(m)
        notes.insert(
            0,
            f"fold pads: {len(done.folded)} zero Pad(s) folded into the pads of the Conv/pool reading them, as "
            f"onnxruntime does at session start ({', '.join(done.folded)})",
        )
    return notes


def fuse_bias_matmuls(m: ModelProto, keep=lambda node: False) -> list[str]:
    """MatMul + constant bias Add on a 2-D activation -> Gemm (see fuse_gemm.py): one note for all."""
    fused = fuse_matmul_add(m, keep)
    if not fused:
        return []
    return [
        f"fuse matmul + add: {len(fused)} MatMul(s) with a bias Add written as Gemm, as onnxruntime does at "
        f"session start, so the quantized form runs as one integer kernel ({', '.join(fused)})"
    ]


def lift_constants(m: ModelProto) -> int:
    outputs = {o.name for o in m.graph.output}
    keep, lifted = [], 0
    for node in m.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            try:
                value = _constant_value(node)
            except ValueError:
                keep.append(node)
                continue
            add_initializer(m, node.output[0], value)
            lifted += 1
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return lifted


def _constant_value(node) -> np.ndarray:
    a = node.attribute[0]
    kinds = {
        "value": lambda: numpy_helper.to_array(a.t),
        "value_float": lambda: np.array(a.f, np.float32),
        "value_floats": lambda: np.array(a.floats, np.float32),
        "value_int": lambda: np.array(a.i, np.int64),
        "value_ints": lambda: np.array(a.ints, np.int64),
    }
    if a.name not in kinds:  # sparse_value, value_string(s): leave as a node
        raise ValueError(a.name)
    return kinds[a.name]()


def remove_identities(m: ModelProto) -> int:
    idx = GraphIndex(m.graph)
    rename: dict[str, str] = {}
    keep = []
    for node in m.graph.node:
        is_id = node.op_type == "Identity" or (
            node.op_type == "Dropout" and (len(node.output) < 2 or not node.output[1])
        )
        if is_id and node.domain in ("", "ai.onnx") and not idx.escapes(node.output[0]):
            src = node.input[0]
            rename[node.output[0]] = rename.get(src, src)
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return len(rename)


def fold_constants(m: ModelProto) -> int:
    """Evaluate nodes whose inputs are all initializers (e.g. a Transpose of a weight) with onnx.reference."""
    folded = 0
    idx = GraphIndex(m.graph)
    consts = dict(idx.inits)
    keep = []
    opsets = {imp.domain: imp.version for imp in m.opset_import}
    for node in m.graph.node:
        ins = [i for i in node.input if i]
        foldable = (
            ins
            and all(i in consts for i in ins)
            and node.domain in ("", "ai.onnx")
            and node.op_type not in _NO_FOLD
            and not any(idx.escapes(o) for o in node.output)
            and not subgraphs(node)
        )
        if foldable:
            values = _evaluate(node, {i: numpy_helper.to_array(consts[i]) for i in ins}, opsets)
            if values is not None:
                for name, v in zip(node.output, values):
                    t = numpy_helper.from_array(np.asarray(v), name)
                    consts[name] = t
                    m.graph.initializer.append(t)
                folded += 1
                continue
        keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    if folded:
        drop_unused_initializers(m)
    return folded


def _evaluate(node, feeds: dict[str, np.ndarray], opsets: dict[str, int]) -> list[np.ndarray] | None:
    in_bytes = sum(v.nbytes for v in feeds.values())
    try:
        g = helper.make_graph(
            [node],
            "fold",
            [
                helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for k, v in feeds.items()
            ],
            [helper.make_value_info(o, helper.TypeProto()) for o in node.output if o],
        )
        model = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
        out = ReferenceEvaluator(model).run(None, feeds)
    except Exception:
        return None  # not foldable offline; onnxruntime will handle it at run time
    if (
        sum(np.asarray(v).nbytes for v in out) > max(2 * in_bytes, 1 << 20)
        or sum(np.asarray(v).nbytes for v in out) > _MAX_FOLD_BYTES
    ):
        return None  # folding would grow the file (e.g. Expand, ConstantOfShape)
    return out


def drop_unused_initializers(m: ModelProto) -> None:
    idx = GraphIndex(m.graph)
    used = set(idx.consumers) | idx.graph_outputs | idx.subgraph_refs
    # Deleted by index, from the end: extend() would serialize every kept tensor (a copy of each weight, and
    # an error on any single tensor over 2 GB).
    for i in reversed([i for i, t in enumerate(m.graph.initializer) if t.name not in used]):
        del m.graph.initializer[i]
    graph_inputs = [i for i in m.graph.input if i.name in used or i.name not in idx.inits]
    del m.graph.input[:]
    m.graph.input.extend(graph_inputs)


def fold_batchnorm_into_conv(m: ModelProto) -> int:
    idx = GraphIndex(m.graph)
    namer = Namer(m.graph)
    remove, folded = set(), 0
    for bn in m.graph.node:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        conv = idx.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(idx.consumers[conv.output[0]]) != 1:
            continue
        if idx.escapes(conv.output[0]) or not all(idx.is_const(n) for n in list(bn.input[1:5]) + [conv.input[1]]):
            continue
        if len(conv.input) > 2 and conv.input[2] and not idx.is_const(conv.input[2]):
            continue
        gamma, beta, mean, var = (idx.const(n).astype(np.float64) for n in bn.input[1:5])
        w = idx.const(conv.input[1])
        b = idx.const(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
        k = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        new_w = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        new_b = ((b - mean) * k + beta).astype(w.dtype)
        # New names, free in the whole graph: the old weight may be shared, and "<output>_w" may be taken.
        wname, bname = namer.fresh(bn.output[0] + "_w"), namer.fresh(bn.output[0] + "_b")
        add_initializer(m, wname, new_w)
        add_initializer(m, bname, new_b)
        del conv.input[1:]
        conv.input.extend([wname, bname])
        conv.output[0] = bn.output[0]
        remove.add(id(bn))
        folded += 1
    if folded:
        keep = [n for n in m.graph.node if id(n) not in remove]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        drop_unused_initializers(m)
    return folded


def upgrade_opset(model: onnx.ModelProto, need: tuple[int, str] | None) -> tuple[onnx.ModelProto, str | None]:
    """The opset the scheme's operators need (`need`: the version and why; None: no standard opset needed).
    onnx's converter may add Constant nodes (Clip's min/max from opset 11 on) and unnamed nodes: lifted and
    named like the input's own."""
    if need is None:
        return model, None
    model, note = ensure_opset(model, *need)
    if note:
        lift_constants(model)
        name_nodes(model.graph)
        # An IR version the new opset allows (IR < 4 also wanted every initializer listed as a graph input).
        ir = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        if model.ir_version < ir:
            note += f"; IR version {model.ir_version} -> {ir}"
            model.ir_version = ir
    return model, note
