"""SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models", sec. 4): move per-channel activation outliers into the weights that read them.

An activation X [..., K] read by MatMul/Gemm with constant weights W [K, N] computes X W == (X / s) (diag(s) W)
for any positive s. With s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), channels carrying outliers shrink
before one per-tensor 8-bit range is set for X, and their weight rows grow instead (weights are quantized per
output channel, where a larger row costs little). 1/s goes into the producer's parameters where that is
exact and X has no other reader (LayerNormalization scale and bias, MatMul [+ Add bias] or Gemm output
columns); otherwise one Mul(X, 1/s) feeds the smoothed readers and every other reader keeps reading X.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from qcli.core.errors import InputError, NonFiniteValues
from qcli.core.graph import FLOAT, GraphIndex, Namer, add_initializer, attr

# s is clamped to [S_MIN, S_MAX]: any positive s is exact, but beyond this range W * s and X / s drift towards
# float32 denormals or overflow (a near-dead channel with alpha near 1) for no quantization gain.
S_MIN, S_MAX = 1e-5, 1e5
_DEFAULT_DOMAINS = ("", "ai.onnx")


class ChannelAbsMax:
    """Streaming per-channel max |x| over every axis but the last (the MatMul's K axis). update(x) any
    leading shape (ragged sequence lengths). value() -> float32 [K]. NaN/inf: NonFiniteValues (an InputError;
    calibrate.observe adds the batch and tensor to its message)."""

    def __init__(self) -> None:
        self._max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim == 0:
            raise InputError("per-channel smoothing needs a tensor with a channel (last) axis, got a scalar")
        k = x.shape[-1]
        if self._max is not None and k != self._max.shape[0]:
            raise InputError(f"the channel count (last axis) changed between batches: {self._max.shape[0]}, {k}")
        if self._max is None:
            self._max = np.zeros(k, np.float32)
        if x.size == 0:
            return
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)  # -min of int8 -128 would wrap
        axes = tuple(range(x.ndim - 1))
        m = np.maximum(np.max(x, axis=axes), -np.min(x, axis=axes))  # no |x| copy; NaN propagates
        if not np.all(np.isfinite(m)):
            bad = ", ".join(map(str, np.flatnonzero(~np.isfinite(m))[:5]))
            raise NonFiniteValues(f"contains NaN or infinite values (channel(s) {bad})")
        np.maximum(self._max, m.astype(np.float32), out=self._max)

    def value(self) -> np.ndarray:
        if self._max is None:
            raise InputError("no batch was observed: nothing to smooth with")
        return self._max.copy()


@dataclass(frozen=True)
class SmoothedLayer:
    tensor: str  # the activation that was smoothed
    readers: tuple[str, ...]  # MatMul/Gemm node names whose weights absorbed s
    folded_into: str  # the producer node that absorbed 1/s, or "Mul" (an explicit Mul node was inserted)
    alpha: float
    act_absmax_before: float  # max over channels of max|X_j|
    act_absmax_after: float  # the same after smoothing (max over j of max|X_j| / s_j)
    mul_node: str = ""  # the inserted Mul's node name when folded_into == "Mul"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["readers"] = list(self.readers)
        return d


def smooth_targets(model: ModelProto) -> list[str]:
    """Activations with at least one MatMul (X as A, constant float 2-D B [K, N]) or Gemm (X as A, transA=0,
    constant float B) reader: calibration collects a ChannelAbsMax for each. Other readers, if any, are
    left reading X (smooth() inserts a Mul for the smoothed ones)."""
    return list(targets(model.graph, GraphIndex(model.graph)))


def smooth(model: ModelProto, absmax: dict[str, np.ndarray], alpha: float = 0.5) -> list[SmoothedLayer]:
    """Smooth every target with an entry in `absmax` (tensor -> ChannelAbsMax.value()); edits `model` in place.
    The float outputs are unchanged up to float32 rounding. Returns what was done, target by target."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"SmoothQuant alpha must be a number from 0 to 1 (got {alpha!r})")
    alpha = float(alpha)
    g = model.graph
    found = targets(g, GraphIndex(g))
    unknown = sorted(set(absmax) - set(found))
    if unknown:
        raise InputError(f"{unknown[0]!r} is not an activation read by a MatMul/Gemm with a constant weight")
    ed = Editor(model)
    # Every s comes from the weights as given: a weight smoothed on both sides (a chain MatMul -> MatMul)
    # gets diag(s1) W diag(1/s2) whatever the order the targets are visited in.
    plans = [(t, readers, *_scales(t, absmax[t], readers, ed, alpha)) for t, readers in found.items() if t in absmax]
    layers, muls = [], []
    for t, readers, act, s in plans:
        if np.all(s == 1):
            continue  # nothing to move (all-zero channels, or alpha = 0 with unit weights)
        where, mul = migrate(ed, t, readers, s)
        muls += [mul] if mul is not None else []
        after = float(np.max(act / s.astype(np.float64)))
        name = mul.name if mul is not None else ""
        layers.append(SmoothedLayer(t, tuple(r.name for r in readers), where, alpha, float(act.max()), after, name))
    place_muls(g, muls)
    return layers


def migrate(ed: Editor, t: str, readers: list[NodeProto], s: np.ndarray) -> tuple[str, NodeProto | None]:
    """X W == (X / s)(diag(s) W) for the `readers` of activation t (all its MatMul/Gemm readers with constant
    weights, as targets() lists them): their weights times s along K, and 1/s folded into t's producer where
    that is exact, else a Mul(t, 1/s) feeding the readers. Returns (the producer that absorbed 1/s, None) or
    ("Mul", the new Mul node, not yet in the graph: place_muls puts it there)."""
    g = ed.g
    for r in readers:
        ed.scale(r, 1, s, 1 - _out_axis(r))  # the K axis: weight rows (columns of a transB Gemm)
    inv = (1.0 / s.astype(np.float64)).astype(np.float32)
    site = _fold_site(g, GraphIndex(g), t, readers, len(s))
    if not site:
        return "Mul", insert_mul(g, ed, t, readers, inv)
    where, uses = site
    for node, i, axis in uses:
        ed.scale(node, i, inv, axis)
    return where, None


def targets(g: GraphProto, idx: GraphIndex) -> dict[str, list[NodeProto]]:
    """Activation -> its MatMul/Gemm readers (X as A) with constant float 2-D weights of one K."""
    non_float_inputs = {v.name for v in g.input if v.type.tensor_type.elem_type != FLOAT}
    out: dict[str, list[NodeProto]] = {}
    for t, consumers in idx.consumers.items():
        if t in idx.inits or t in non_float_inputs:
            continue
        readers = list({id(n): n for n in consumers if n.input[0] == t and _kn(n, idx)}.values())
        if readers and len({_kn(n, idx)[0] for n in readers}) == 1:
            out[t] = readers
    return out


def _kn(node: NodeProto, idx: GraphIndex) -> tuple[int, int] | None:
    """(K, N) of a MatMul/Gemm (transA=0) whose weight is a constant float 2-D initializer, else None."""
    if node.domain not in _DEFAULT_DOMAINS or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    w = node.input[1]
    if w == node.input[0] or not idx.is_float_const(w) or len(idx.inits[w].dims) != 2 or attr(node, "transA", 0):
        return None
    k, n = idx.inits[w].dims
    return (n, k) if _out_axis(node) == 0 else (k, n)


def _out_axis(node: NodeProto) -> int:
    """The output-channel (N) axis of a MatMul/Gemm weight."""
    return 0 if node.op_type == "Gemm" and attr(node, "transB", 0) else 1


def _scales(t: str, act, readers: list[NodeProto], ed: Editor, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(max|X_j| as float64, s as float32). max|W_j| is over every output of every smoothed reader."""
    act = np.asarray(act, np.float64).reshape(-1)
    w = np.max([np.abs(ed.value(r.input[1])).max(axis=_out_axis(r)) for r in readers], axis=0).astype(np.float64)
    if act.shape != w.shape or not np.all(np.isfinite(act)) or np.any(act < 0):
        raise InputError(f"max|x| of {t!r} must be {w.size} finite, non-negative values (got shape {act.shape})")
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(act, alpha) / np.power(w, 1.0 - alpha)
    s = np.where((act > 0) & (w > 0), np.clip(s, S_MIN, S_MAX), 1.0)  # a zero channel has nothing to move
    return act, s.astype(np.float32)


def _fold_site(g: GraphProto, idx: GraphIndex, t: str, readers, k: int):
    """(producer name, [(node, input index, axis)] to scale by 1/s) when 1/s folds exactly into the producer
    of t (axis -1: the last axis of a bias or LayerNorm scale)."""
    p = idx.producer.get(t)
    if p is None or p.domain not in _DEFAULT_DOMAINS or idx.escapes(t):
        return None
    if sum(list(n.input).count(t) for n in g.node) != len(readers):
        return None  # another reader keeps reading X
    opt = p.input[2] if p.op_type in ("LayerNormalization", "Gemm") and len(p.input) > 2 else ""  # bias, C
    if opt and not idx.is_float_const(opt):
        return None
    tail = [(p, 2, -1)] if opt else []
    if p.op_type == "LayerNormalization" and p.output[0] == t and idx.is_float_const(p.input[1]):
        axis, rank = attr(p, "axis", -1), _rank(g, t) or _rank(g, p.input[0])
        return (p.name, [(p, 1, -1)] + tail) if axis == -1 or (rank and axis == rank - 1) else None
    if p.op_type in ("MatMul", "Gemm") and (_kn(p, idx) or (0, 0))[1] == k:
        return p.name, [(p, 1, _out_axis(p))] + tail
    if p.op_type == "Add" and len(p.input) == 2:
        for i in (0, 1):
            c, m = p.input[i], p.input[1 - i]
            mm = idx.producer.get(m)
            if idx.is_float_const(c) and mm and mm.op_type == "MatMul" and (_kn(mm, idx) or (0, 0))[1] == k:
                if len(idx.consumers[m]) == 1 and not idx.escapes(m) and mm.domain in _DEFAULT_DOMAINS:
                    return mm.name, [(mm, 1, 1), (p, i, -1)]
    return None


def _rank(g: GraphProto, name: str) -> int | None:
    for v in list(g.value_info) + list(g.input) + list(g.output):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return None


def insert_mul(g: GraphProto, ed: Editor, t: str, readers, inv: np.ndarray) -> NodeProto:
    inv_name = ed.add(f"{t}_smooth_inv", inv)
    xs = ed.namer.fresh(f"{t}_smoothed")
    mul = helper.make_node("Mul", [t, inv_name], [xs], name=ed.namer.fresh(f"{t}_smooth"))
    for r in readers:
        r.input[0] = xs
    for v in [v for v in g.value_info if v.name == t]:
        copy = g.value_info.add()
        copy.CopyFrom(v)
        copy.name = xs
    return mul


def place_muls(g: GraphProto, muls: list[NodeProto]) -> None:
    """Insert each Mul just before the first node that reads its output (keeps the graph topologically sorted)."""
    if not muls:
        return
    pending = {m.output[0]: m for m in muls}
    order = []
    for node in g.node:
        order += [pending.pop(i) for i in node.input if i in pending]
        order.append(node)
    order += pending.values()  # read by nothing in the main graph (cannot happen: each feeds its readers)
    del g.node[:]
    g.node.extend(order)


class Editor:
    """Rewrites initializers for one use: in place when that use is the only reader, else as a fresh copy."""

    def __init__(self, model: ModelProto) -> None:
        self.model = model
        self.g = g = model.graph
        self.namer = Namer(g)
        self.inits = {t.name: t for t in g.initializer}
        idx = GraphIndex(g)
        self.pinned = idx.subgraph_refs | idx.graph_outputs | {v.name for v in g.input}  # readers beyond nodes
        self.log: list[tuple[str, int, str, TensorProto | None]] = []  # what put() changed, in order

    def value(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def add(self, stem: str, value: np.ndarray) -> str:
        name = self.namer.fresh(stem)
        self.inits[name] = add_initializer(self.model, name, value)
        return name

    def scale(self, node: NodeProto, i: int, factor: np.ndarray, axis: int) -> None:
        """node.input[i] times `factor` along `axis` (-1: the last axis, size-1 or missing axes broadcast)."""
        v = self.value(node.input[i]).astype(np.float64)
        if axis == -1:
            v = np.broadcast_to(v, v.shape[:-1] + factor.shape) * factor
        else:
            v = v * np.expand_dims(factor, 1 - axis)
        self.put(node, i, v.astype(np.float32), f"{node.input[i]}_smooth")

    def put(self, node: NodeProto, i: int, v: np.ndarray, stem: str) -> None:
        """node.input[i] := v, in place when that use is the only reader, else as a fresh copy (the other readers
        keep the original). Logged in `log` as (node, i, the name it read, the tensor before if in place)."""
        name = node.input[i]
        uses = sum(list(n.input).count(name) for n in self.g.node)
        if uses == 1 and name not in self.pinned:
            before = TensorProto()
            before.CopyFrom(self.inits[name])
            self.log.append((node.name, i, name, before))
            self.inits[name].CopyFrom(numpy_helper.from_array(v, name))
        else:
            self.log.append((node.name, i, name, None))
            node.input[i] = self.add(stem, v)
