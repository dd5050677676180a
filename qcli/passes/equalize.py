"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", sec. 4.1): rescale the output channels of a Conv and the matching input channels of the Conv
that reads it, so that no single channel sets the 8-bit range of a whole tensor.

For a pair Conv1 -> [f] -> Conv2, where f commutes with a positive per-channel scale (f(x / s) == f(x) / s:
Relu, LeakyRelu, PRelu, or nothing), channel i is divided by s_i on Conv1's side (weight rows and bias) and
multiplied by s_i on Conv2's side (the weight column that reads channel i). The float model computes the same.
A classifier head Conv1 -> [f] -> GlobalAveragePool -> Flatten/Squeeze -> Gemm/MatMul is a pair too: the
average and the reshape to [N, C] are linear per channel, and the Gemm's input column i takes s_i.
With r1_i the range (max |w|) of Conv1's output channel i and r2_i that of Conv2's input channel i,
s_i = sqrt(r1_i * r2_i) / r2_i makes both ranges sqrt(r1_i * r2_i). Chains (Conv1 -> Conv2 -> Conv3) change
Conv2 from both sides, so the pairs are swept repeatedly until the scales settle.
Bias absorption (sec. 4.2) is not done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from onnx import ModelProto, NodeProto, numpy_helper

from qcli.core.errors import InputError
from qcli.core.graph import GraphIndex, attr

# f(x * s) == f(x) * s for every s > 0, per channel (PRelu's slope is unchanged by the scale).
EQUIVARIANT = {"Relu", "LeakyRelu", "PRelu"}
# Activations that make a Conv -> f -> Conv chain look like a candidate, but do not commute with a scale:
# Clip(0, 6) saturates at a fixed value, HardSwish/HardSigmoid have fixed breakpoints, the rest are curved.
NOT_EQUIVARIANT = {
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Softplus",
    "Softsign",
    "Mish",
    "ThresholdedRelu",
}
# Scales are clamped to [1/S_LIMIT, S_LIMIT] per sweep: where one side's range is tiny next to the other's
# (a nearly dead channel), the exact s would push the other side's weights towards float32 denormals or
# overflow for no quantization gain. Later sweeps may move further if the ranges still ask for it.
S_LIMIT = 256.0
TOL = 1e-4  # stop sweeping when no scale of a sweep differs from 1 by more than this (relative)


@dataclass(frozen=True)
class EqualizedPair:
    first: str  # node name of the producing Conv
    second: str  # node name of the consuming Conv
    through: str | None  # op types between them ("Relu -> GlobalAveragePool -> Flatten"), None if direct
    channels: int
    spread_before: float  # max/median of the per-channel weight ranges of `first`'s output channels, before
    spread_after: float  # the same after equalization

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread_before"] = round(self.spread_before, 3)
        d["spread_after"] = round(self.spread_after, 3)
        return d


@dataclass(frozen=True)
class EqualizeResult:
    pairs: list[EqualizedPair]
    skipped: list[tuple[str, str, str]]  # (first, second, reason) of the candidates left as they are

    def notes(self) -> list[str]:
        out = []
        for p in self.pairs:
            via = f"through {p.through}" if p.through else "directly"
            out.append(
                f"equalized {p.first} -> {p.second} {via}: {p.channels} channels, "
                f"weight range spread {p.spread_before:.1f}x -> {p.spread_after:.1f}x"
            )
        return out


@dataclass(frozen=True)
class _Pair:
    first: NodeProto
    second: NodeProto
    through: tuple[NodeProto, ...]  # what lies between: an activation, then GlobalAveragePool and its reshape


SPATIAL = {"GlobalAveragePool"}  # linear per channel: GAP(x / s) == GAP(x) / s
TO_ROWS = {"Flatten", "Squeeze"}  # [N, C, 1, 1] -> [N, C], channel order kept (checked in _problem)
HEADS = {"Gemm", "MatMul"}  # read the [N, C] rows: input channel i is row i of B (column i with transB)


def equalize(model: ModelProto, iterations: int = 10) -> EqualizeResult:
    """Equalize every eligible Conv -> [Relu/LeakyRelu/PRelu] -> Conv pair (and Conv -> [...] -> average ->
    Gemm/MatMul head) of the main graph, in place.
    Expects a preprocessed float model (weights as initializers, BatchNormalization folded into Conv)."""
    if iterations < 1:
        raise InputError(f"equalization needs at least 1 iteration (got {iterations})")
    idx = GraphIndex(model.graph)
    pairs, skipped = _find_pairs(idx)
    arrays = {t: idx.const(t).astype(np.float64) for p in pairs for t in _tensors(p)}
    before = [spread(arrays[p.first.input[1]]) for p in pairs]
    for _ in range(iterations):
        moved = max((_equalize_pair(p, arrays) for p in pairs), default=0.0)
        if moved < TOL:
            break
    for t in model.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name].astype(np.float32), t.name))
    done = [
        EqualizedPair(
            _name(p.first),
            _name(p.second),
            " -> ".join(n.op_type for n in p.through) or None,
            int(arrays[p.first.input[1]].shape[0]),
            b,
            spread(arrays[p.first.input[1]]),
        )
        for p, b in zip(pairs, before)
    ]
    return EqualizeResult(done, skipped)


def spread(w: np.ndarray) -> float:
    """max / median of the per-output-channel ranges (max |w|) of a Conv weight; dead channels (range 0) are
    left out, and a weight with no live channel has spread 1."""
    r = out_ranges(w)
    r = r[r > 0]
    return float(r.max() / np.median(r)) if r.size else 1.0


def out_ranges(w: np.ndarray) -> np.ndarray:
    """max |w| per output channel (axis 0)."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def in_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """max |w| per input channel of a Conv with `group` groups: input channel i (in group i // cin_g) is read
    by column i % cin_g of that group's output channels only."""
    cout, cin_g = w.shape[:2]
    return np.abs(w).reshape(group, cout // group, cin_g, -1).max(axis=(1, 3)).reshape(-1)


def scale_inputs(w: np.ndarray, s: np.ndarray, group: int) -> np.ndarray:
    """w with input channel i (see in_ranges) multiplied by s[i]."""
    cout, cin_g = w.shape[:2]
    return (w.reshape(group, cout // group, cin_g, -1) * s.reshape(group, 1, cin_g, 1)).reshape(w.shape)


def _equalize_pair(p: _Pair, arrays: dict[str, np.ndarray]) -> float:
    """One rescaling of the pair; returns the largest relative change of a scale (0 when settled)."""
    w1, w2 = arrays[p.first.input[1]], arrays[p.second.input[1]]
    r1, r2 = out_ranges(w1), _second_in_ranges(p.second, w2)
    live = (r1 > 0) & (r2 > 0)  # a dead channel on either side keeps s = 1
    s = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] * r2[live]) / r2[live]
    s = np.clip(s, 1.0 / S_LIMIT, S_LIMIT)
    shape = (-1,) + (1,) * (w1.ndim - 1)
    arrays[p.first.input[1]] = w1 / s.reshape(shape)
    if _bias(p.first):
        arrays[_bias(p.first)] = arrays[_bias(p.first)] / s
    arrays[p.second.input[1]] = _second_scaled(p.second, w2, s)
    return float(np.max(np.abs(s - 1.0), initial=0.0))


def _rows_first(node: NodeProto) -> bool:
    """Whether the head's B holds input channel i in row i ([C, N']: MatMul, Gemm without transB)."""
    return not (node.op_type == "Gemm" and attr(node, "transB", 0))


def _second_in_ranges(second: NodeProto, w: np.ndarray) -> np.ndarray:
    if second.op_type == "Conv":
        return in_ranges(w, attr(second, "group", 1))
    return np.abs(w).max(axis=1 if _rows_first(second) else 0)


def _second_scaled(second: NodeProto, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    if second.op_type == "Conv":
        return scale_inputs(w, s, attr(second, "group", 1))
    return w * (s[:, None] if _rows_first(second) else s[None, :])


def _bias(conv: NodeProto) -> str:
    return conv.input[2] if len(conv.input) > 2 else ""


def _tensors(p: _Pair) -> list[str]:
    return [t for t in (p.first.input[1], _bias(p.first), p.second.input[1]) if t]


def _name(node: NodeProto) -> str:
    return node.name or node.output[0]


def _once(nodes: list[NodeProto]) -> list[NodeProto]:
    """The nodes without repeats (a node reading a tensor twice is listed twice by GraphIndex.consumers)."""
    return list({id(n): n for n in nodes}.values())


def _candidates(idx: GraphIndex):
    """Every Conv -> [activation] -> Conv and Conv -> [activation] -> GlobalAveragePool -> Flatten/Squeeze ->
    Gemm/MatMul chain, whatever its eligibility, in graph order."""
    for first in idx.graph.node:
        if first.op_type != "Conv" or first.domain not in ("", "ai.onnx"):
            continue
        yield from _reached(idx, first, first.output[0], ())
        for act in _readers(idx, first.output[0], EQUIVARIANT | NOT_EQUIVARIANT):
            yield from _reached(idx, first, act.output[0], (act,))


def _reached(idx: GraphIndex, first: NodeProto, t: str, through: tuple[NodeProto, ...]):
    """The pairs of `first` whose second side reads tensor t: a Conv, or a head through the average."""
    yield from (_Pair(first, c, through) for c in _readers(idx, t, {"Conv"}))
    for gap in _readers(idx, t, SPATIAL):
        for rows in _readers(idx, gap.output[0], TO_ROWS):
            for head in _readers(idx, rows.output[0], HEADS):
                yield _Pair(first, head, (*through, gap, rows))


def _readers(idx: GraphIndex, t: str, ops: set[str]) -> list[NodeProto]:
    """The standard-domain nodes of these op types that read t as their first input."""
    nodes = _once(idx.consumers[t])
    return [n for n in nodes if n.op_type in ops and n.domain in ("", "ai.onnx") and n.input[0] == t]


def _find_pairs(idx: GraphIndex) -> tuple[list[_Pair], list[tuple[str, str, str]]]:
    pairs, skipped = [], []
    for p in _candidates(idx):
        why = _problem(p, idx)
        if why:
            skipped.append((_name(p.first), _name(p.second), why))
        else:
            pairs.append(p)
    return pairs, skipped


def _problem(p: _Pair, idx: GraphIndex) -> str | None:
    """Why the pair cannot be equalized exactly, or None."""
    links = [(n, n.output[0]) for n in (p.first, *p.through)]
    for node, t in links:
        readers = len(idx.consumers[t])
        if readers != 1:
            return f"output of {_name(node)} has {readers} readers"
        if idx.escapes(t):
            return f"output of {_name(node)} is a graph output"
    act = [n for n in p.through if n.op_type not in SPATIAL | TO_ROWS]
    if act and act[0].op_type not in EQUIVARIANT:
        return f"{act[0].op_type} between: not scale-equivariant"
    for conv, role, t in ((p.first, "weight", p.first.input[1]), (p.first, "bias", _bias(p.first))) + (
        (p.second, "weight", p.second.input[1]),
    ):
        if not t:
            continue
        if not idx.is_float_const(t):
            return f"{role} of {_name(conv)} is not a constant float32 initializer"
        if len(idx.consumers[t]) != 1 or idx.escapes(t):
            return f"{role} {t} of {_name(conv)} is shared with another node or output"
    w1, w2 = idx.inits[p.first.input[1]].dims, idx.inits[p.second.input[1]].dims
    if p.second.op_type in HEADS:
        return _head_problem(p, idx, w1, w2)
    group = attr(p.second, "group", 1)
    if len(w1) < 3 or len(w2) < 3 or group < 1 or w2[0] % group:
        return "weights are not Conv kernels with a valid group count"
    if w1[0] != w2[1] * group:
        return f"{_name(p.first)} has {w1[0]} output channels, {_name(p.second)} reads {w2[1] * group}"
    return None


def _head_problem(p: _Pair, idx: GraphIndex, w1, w2) -> str | None:
    """Why a Conv -> ... -> GlobalAveragePool -> Flatten/Squeeze -> Gemm/MatMul pair is not exact, or None."""
    rows, head = p.through[-1], p.second
    if rows.op_type == "Flatten" and attr(rows, "axis", 1) != 1:
        return "Flatten not at axis 1"
    if rows.op_type == "Squeeze":
        axes = attr(rows, "axes", None) if len(rows.input) < 2 else idx.const(rows.input[1])
        if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            return "Squeeze does not remove exactly the two spatial axes"
    if len(w1) != 4 or len(w2) != 2 or (head.op_type == "Gemm" and attr(head, "transA", 0)):
        return "not a 2-D Conv feeding a Gemm/MatMul that reads [N, C] rows"
    if w1[0] != w2[0 if _rows_first(head) else 1]:
        return f"{_name(p.first)} has {w1[0]} output channels, {_name(head)} reads {w2[0 if _rows_first(head) else 1]}"
    return None
