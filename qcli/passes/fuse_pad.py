"""Fold a zero constant Pad into the pads of the Conv / AveragePool / MaxPool that reads it.

onnxruntime does this at session start (PadFusion), so the float model runs without the Pad; the plan must
see the same graph, or each Pad cuts an int8 region in two (a TF/Keras "SAME" conv exports as Pad -> Conv).
Only folds that give the same result are made; a Pad in front of a Conv / pool that stays gets a note why.

  Conv         zero padding is what Conv's own pads add: always exact (auto_pad NOTSET or VALID)
  AveragePool  exact when padded cells count in the average (count_include_pad=1, or set to 1 where the
               pool has no pads of its own: the Pad's zeros were counted)
  MaxPool      the pool ignores its padded cells, the Pad's zeros compete in the max: exact only where the
               input is >= 0 (after Relu / Clip(0, ...)) and every window keeps a real element
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from qcli.core import fold
from qcli.core.graph import GraphIndex, attr, drop_nodes

READERS = ("Conv", "AveragePool", "MaxPool")


@dataclass(frozen=True)
class PadFolds:
    folded: tuple[str, ...]  # "pad -> reader" for every Pad folded
    kept: tuple[str, ...]  # why a Pad in front of a Conv / pool stays


class _Refused(Exception):
    pass


def fuse_pads(m: ModelProto) -> PadFolds:
    """Fold in place; unused initializers are left for the caller to drop."""
    idx = GraphIndex(m.graph)
    opset = next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), 1)
    folded, kept, remove = [], [], set()
    for pad in m.graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx"):
            continue
        readers = idx.consumers.get(pad.output[0], [])
        reader = next((r for r in readers if r.op_type in READERS and r.input[0] == pad.output[0]), None)
        if reader is None or reader.domain not in ("", "ai.onnx"):
            continue
        try:
            if len(readers) > 1 or idx.escapes(pad.output[0]):
                raise _Refused("its output has other readers" if len(readers) > 1 else "its output is a graph output")
            pads = _pads(pad, idx, opset, _rank(reader, idx))
            _fold_into(reader, pads, pad.input[0], idx)
        except _Refused as e:
            kept.append(f"Pad {pad.name!r} kept in front of {reader.op_type} {reader.name!r}: {e}")
            continue
        reader.input[0] = pad.input[0]
        remove.add(id(pad))
        folded.append(f"{pad.name} -> {reader.name}")
    drop_nodes(m.graph, remove)
    return PadFolds(tuple(folded), tuple(kept))


def _const(name: str, idx: GraphIndex) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's `value`, else None."""
    if name in idx.inits:
        return idx.const(name)
    prod = idx.producer.get(name)
    if prod is not None and prod.op_type == "Constant" and prod.attribute and prod.attribute[0].name == "value":
        return numpy_helper.to_array(prod.attribute[0].t)
    return None


def _rank(reader: NodeProto, idx: GraphIndex) -> int | None:
    if reader.op_type == "Conv":
        w = idx.inits.get(reader.input[1]) if len(reader.input) > 1 else None
        return len(w.dims) if w is not None else None
    return len(attr(reader, "kernel_shape", [])) + 2


def _pads(pad: NodeProto, idx: GraphIndex, opset: int, rank: int | None) -> np.ndarray:
    """The Pad's [begin..., end...] over every axis; raises _Refused where it is not a zero constant pad."""
    mode = attr(pad, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise _Refused(f"mode {mode!r} pads with copies of the input, not zeros")
    if opset < 11:
        pads, value = attr(pad, "pads"), attr(pad, "value", 0.0)
        if pads is None:
            raise _Refused("it has no pads attribute (Pad-1)")
        pads = np.array(pads, np.int64)
    else:
        ins = list(pad.input) + [""] * (4 - len(pad.input))
        pads = _const(ins[1], idx)
        if pads is None:
            raise _Refused("its pads are computed at run time")
        value = 0.0
        if ins[2]:
            v = _const(ins[2], idx)
            if v is None:
                raise _Refused("its pad value is computed at run time")
            value = float(v.reshape(-1)[0]) if v.size else 0.0
        if ins[3]:
            pads = _on_axes(pads.astype(np.int64), _const(ins[3], idx), rank)
    if value != 0.0:
        raise _Refused(f"it pads with {value:g}, not zero")
    pads = pads.astype(np.int64).reshape(-1)
    if rank is None:
        raise _Refused("the reader's input rank is unknown here (its weight is not a constant)")
    if pads.size != 2 * rank:
        raise _Refused("its pads do not match the reader's input rank")
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        raise _Refused("it pads the batch or channel axis")
    if (pads < 0).any():
        raise _Refused("it crops (negative pads)")
    return pads


def _on_axes(pads: np.ndarray, axes: np.ndarray | None, rank: int | None) -> np.ndarray:
    """Opset 18's axes input: pads given for some axes only, spread over all of them."""
    if axes is None:
        raise _Refused("its axes input is computed at run time")
    if rank is None:
        raise _Refused("the reader's input rank is unknown here (its weight is not a constant)")
    axes = [int(a) % rank for a in axes.reshape(-1)]
    if len(set(axes)) != len(axes) or pads.size != 2 * len(axes):
        raise _Refused("its axes and pads do not match")
    full = np.zeros(2 * rank, np.int64)
    for k, a in enumerate(axes):
        full[a], full[rank + a] = pads[k], pads[len(axes) + k]
    return full


def _fold_into(reader: NodeProto, pads: np.ndarray, source: str, idx: GraphIndex) -> None:
    """Add the Pad's spatial pads to the reader's (`source`: the Pad's input); raises _Refused, the reader
    unchanged, where the result would differ."""
    n = pads.size // 2 - 2
    auto_pad = attr(reader, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise _Refused(f"its reader uses auto_pad={auto_pad} (padding computed from the padded shape)")
    own = np.array(attr(reader, "pads", [0] * (2 * n)), np.int64)
    if own.size != 2 * n:
        raise _Refused("the reader's pads do not match the Pad's rank")
    total = own + np.concatenate([pads[2 : 2 + n], pads[n + 4 :]])
    if reader.op_type != "Conv":
        _check_pool(reader, own, total, source, idx)
    sets = {"pads": [int(p) for p in total]}
    if auto_pad == "VALID":
        sets["auto_pad"] = "NOTSET"
    if reader.op_type == "AveragePool" and not attr(reader, "count_include_pad", 0):
        sets["count_include_pad"] = 1  # _check_pool made sure the pool had no pads of its own
    keep = [a for a in reader.attribute if a.name not in sets]
    del reader.attribute[:]
    reader.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in sets.items()])


def _check_pool(reader: NodeProto, own: np.ndarray, total: np.ndarray, source: str, idx: GraphIndex) -> None:
    kernel = np.array(attr(reader, "kernel_shape"), np.int64)
    if attr(reader, "ceil_mode", 0):
        raise _Refused("the pool uses ceil_mode=1")
    if any(d != 1 for d in attr(reader, "dilations", [])):
        raise _Refused("the pool is dilated")
    if (total >= np.tile(kernel, 2)).any():
        raise _Refused("a window would hold padding only")
    if reader.op_type == "AveragePool":
        if not attr(reader, "count_include_pad", 0) and own.any():
            raise _Refused("the pool leaves its own padding out of the average (count_include_pad=0)")
        return
    if len([o for o in reader.output if o]) > 1:
        raise _Refused("the pool also writes indices")
    prod = idx.producer.get(source)
    low = fold.clamp_low(prod, idx) if prod is not None and prod.op_type in fold.CLAMPS else None
    if low is None or low < 0:
        raise _Refused(
            "MaxPool ignores its padded cells, the Pad's zeros compete in the max: exact only on inputs >= 0"
        )
