"""Apply a W8A8 QuantPlan: fold Relu/Clip, quantize weights and biases, insert QuantizeLinear/DequantizeLinear.

Every quantized tensor T gets one QuantizeLinear after its producer and one DequantizeLinear per int8
reader (onnxruntime matches each DQ -> op -> Q unit on its own). When T's producer runs on int8, the
producer writes a new name, and a DequantizeLinear writes T back for float readers, graph outputs and
subgraphs, so nothing outside the region changes. A passthrough writes every output that way (Split);
one qcli writes on the integers itself (ops.NATIVE_INT8: Pad) reads its input's quantized tensor and
writes T's, with no Q/DQ around it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from qcli.core import fold
from qcli.core import qparams as qp
from qcli.core.graph import GraphIndex, Namer
from qcli.core.ops import NATIVE_INT8, input_channels
from qcli.core.plan import Action, ActivationQuant, NodeDecision, QuantPlan, WeightQuant
from qcli.io import model_io
from qcli.passes.dynamic import apply_dynamic
from qcli.passes.preprocess import drop_unused_initializers
from qcli.weights.base import quantized_weight

QUANTIZED_TENSORS_KEY = "qcli.quantized_tensors"  # metadata: {float tensor: its QuantizeLinear output}


class _Rewriter:
    def __init__(self, model: ModelProto, plan: QuantPlan) -> None:
        self.m = model
        self.plan = plan
        self.idx = GraphIndex(model.graph)
        self.name = Namer(model.graph)
        self.act = {d.node: d.action for d in plan.nodes}
        self.weights = {(w.node, w.input_index): w for w in plan.weights}
        self.qparams: dict[str, tuple[str, str]] = {}  # tensor (or shared source) -> (scale, zp) init names
        self.quantized: dict[str, str] = {}  # float tensor -> its quantized tensor name
        self.wcache: dict[tuple, tuple[str, str, str, qp.QParams]] = {}
        self.out: list = []

    def init(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.m.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, ins: list[str], out: str, **attrs) -> None:
        self.out.append(helper.make_node(op, ins, [out], name=self.name(op[0].lower() + "q"), **attrs))

    # activations
    def _act_params(self, a: ActivationQuant) -> tuple[str, str]:
        key = a.share or a.tensor
        if key not in self.qparams:
            qt = qp.QTYPES[a.qtype]
            self.qparams[key] = (
                self.init("s", np.array(a.scale, np.float32)),
                self.init("z", np.array(a.zero_point, qt.np_dtype)),
            )
        return self.qparams[key]

    def emit_q(self, t: str, src: str) -> None:
        """Quantize float tensor `src` (which holds T's values) into a new int8 tensor for T."""
        a = self.plan.activations[t]
        s, z = self._act_params(a)
        if a.q_scale is not None:  # ops folded between src and t: src is quantized straight into t's integers
            s = self.init("s", np.array(a.q_scale, np.float32))
            z = self.init("z", np.array(a.q_zero_point, qp.QTYPES[a.qtype].np_dtype))
        qname = self.name("q")
        self.node("QuantizeLinear", [src, s, z], qname)
        self.quantized[t] = qname

    def dq_of(self, t: str, out: str | None = None) -> str:
        s, z = self._act_params(self.plan.activations[t])
        out = out or self.name("d")
        self.node("DequantizeLinear", [self.quantized[t], s, z], out)
        return out

    def dq_for_float_readers(self, t: str, readers: list) -> None:
        """DQ writing T back for its float readers. onnxruntime's WeightBiasQuantization turns a float Conv /
        ConvTranspose / Gemm reading a per-tensor DQ and writing only into a Q into an integer kernel with
        per-tensor int8 weights, so a node the plan keeps float would not run float. For such readers the DQ
        repeats T's one scale per channel (axis 1): the same values, a pattern that transformation skips."""
        floats = [r for r in readers if self.act.get(r.name, Action.FLOAT) == Action.FLOAT]
        channels = {input_channels(r, self.idx) for r in floats} - {None}
        n = channels.pop() if len(channels) == 1 else 0
        if n < 2:
            self.dq_of(t, out=t)
            return
        a = self.plan.activations[t]
        qt = qp.QTYPES[a.qtype]
        s = self.init("s", np.full(n, a.scale, np.float32))
        z = self.init("z", np.full(n, a.zero_point, qt.np_dtype))
        self.node("DequantizeLinear", [self.quantized[t], s, z], t, axis=1)

    # weights
    def weight_input(self, w: WeightQuant, x_tensor: str | None, w_params: qp.QParams | None) -> tuple:
        value = self.idx.const(w.tensor)
        shift = self.plan.bias_corrections.get(w.node) if w.role == "bias" else None
        if shift is not None:  # the bias correction (steps/bias.py), recorded in the plan
            value = (value.astype(np.float32) + np.asarray(shift, np.float32)).astype(np.float32)
        if w.role == "bias":
            x_scale = np.float32(self.plan.activations[x_tensor].scale)
            p = qp.bias_qparams(x_scale, w_params.scale)
            key = (w.tensor, "bias", x_tensor, w_params.scale.tobytes(), None if shift is None else w.node)
        else:
            key = (w.tensor, w.qtype, w.axis, w.block_size, w.symmetric, w.algo, w.scale_floor)
        if key not in self.wcache:
            if w.role == "bias":
                q = qp.quantize(value, p)
            else:
                q, p = quantized_weight(value, w)
            self.wcache[key] = (self.init("w", q), self.init("ws", p.scale), self.init("wz", p.zero_point), p)
        qname, s, z, p = self.wcache[key]
        out = self.name("wd")
        attrs = {"axis": p.axis} if p.axis is not None and p.scale.ndim > 0 and p.scale.size > 1 else {}
        if p.block_size:
            attrs["block_size"] = p.block_size
        ins = [qname, s, z] if w.role != "bias" else [qname, s]
        self.node("DequantizeLinear", ins, out, **attrs)
        return out, p

    def run(self) -> None:
        g = self.m.graph
        folded = {d.node for d in self.plan.nodes if d.action == Action.FOLDED}
        # Folded ops disappear: the int8 producer writes the last folded op's output name (see fold.py).
        writer = dict(self.idx.producer)
        for node in g.node:
            if node.name in folded:
                prod = writer[fold.data_input(node, self.idx)]
                prod.output[0] = node.output[0]
                writer[node.output[0]] = prod
        for t, a in self.plan.activations.items():
            if self.idx.is_const(t):  # a constant table read by int8 data movement: quantized offline
                qt = qp.QTYPES[a.qtype]
                p = qp.QParams(np.array(a.scale, np.float32), np.array(a.zero_point, qt.np_dtype), qt)
                self.quantized[t] = self.init("t", qp.quantize(self.idx.const(t), p))
        for t in (i.name for i in g.input):
            if t in self.idx.graph_inputs and t in self.plan.activations:
                self.emit_q(t, t)
        for node in g.node:
            if node.name in folded:
                continue
            a = self.act.get(node.name, Action.FLOAT)
            if a == Action.PASSTHROUGH and node.op_type in NATIVE_INT8:
                self._native_inputs(node)
            elif a in (Action.INT8, Action.INT8_OUT_FLOAT, Action.PASSTHROUGH):
                self._rewire_inputs(node)
            self.out.append(node)
            self._after(node, a)
        del g.node[:]
        g.node.extend(self.out)
        drop_unused_initializers(self.m)
        # Shape annotations of tensors that no longer exist (folded, renamed) would only mislead.
        alive = {o for n in g.node for o in n.output}
        keep = [v for v in g.value_info if v.name in alive]
        del g.value_info[:]
        g.value_info.extend(keep)

    def _rewire_inputs(self, node) -> None:
        w_params, x = None, node.input[0]
        for i, t in enumerate(node.input):
            w = self.weights.get((node.name, i))
            if w is not None:
                new, p = self.weight_input(w, x, w_params)
                if w.role == "weight":
                    w_params = p
                node.input[i] = new
            elif t in self.quantized:
                node.input[i] = self.dq_of(t)

    def _native_inputs(self, node) -> None:
        """An op on the integers: the quantized data in; Pad's value quantized like its output (a zero pad is
        the zero point), so it writes exactly what DQ -> Pad -> Q would."""
        node.input[0] = self.quantized[node.input[0]]
        if node.op_type == "Pad":
            a = self.plan.activations[node.output[0]]
            qt = qp.QTYPES[a.qtype]
            value = self.idx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.float32(0)
            p = qp.QParams(np.array(a.scale, np.float32), np.array(a.zero_point, qt.np_dtype), qt)
            q = qp.quantize(np.asarray(value, np.float32).reshape(()), p)
            node.input.extend([""] * (3 - len(node.input)))
            node.input[2] = self.init("pv", q)

    def _after(self, node, a: Action) -> None:
        """A QuantizeLinear for every output of `node` the plan quantizes (each output of a multi-output op)."""
        for k, t in enumerate(node.output):
            if not t or t not in self.plan.activations:
                continue
            if not (a == Action.PASSTHROUGH or (k == 0 and a == Action.INT8)):
                self.emit_q(t, t)  # float producer: float readers keep reading t itself
                continue
            if a == Action.PASSTHROUGH and node.op_type in NATIVE_INT8:
                node.output[k] = self.quantized[t] = self.name("q")  # writes the integers itself
            else:
                raw = self.name("f")
                node.output[k] = raw
                self.emit_q(t, raw)
            readers = self.idx.consumers.get(t, [])
            if self.idx.escapes(t) or any(self.act.get(r.name, Action.FLOAT) == Action.FLOAT for r in readers):
                self.dq_for_float_readers(t, readers)


def apply_w8a8(model: ModelProto, plan: QuantPlan) -> tuple[ModelProto, dict[str, str]]:
    """The quantized model, and for each quantized activation the name of its QuantizeLinear output. LSTMs the
    plan runs on DynamicQuantizeLSTM (schemes/w8a8/recurrent.py) are written by passes/dynamic.py after."""
    plan, recurrent = _split_recurrent(plan)
    # The float weights the plan replaces are not copied: the rewriter reads them from `model`, and those
    # still referenced afterwards (a weight a float node also reads) are copied back. A trial of the accuracy
    # guard or target then costs the quantized model, not a second float one.
    replaced = {w.tensor for w in plan.weights} | {a.tensor for a in plan.activations.values()}
    originals = {t.name: t for t in model.graph.initializer if t.name in replaced}
    m = model_io.copy_without(model, set(originals))
    rw = _Rewriter(m, plan)
    rw.idx.inits.update(originals)
    rw.idx.graph_inputs -= set(originals)
    rw.run()
    _restore(m, originals)
    qnames = {t: q for t, q in rw.quantized.items() if not rw.idx.is_const(t)}
    # Where each original activation went (its QuantizeLinear output), for per-layer comparisons later.
    entry = next((p for p in m.metadata_props if p.key == QUANTIZED_TENSORS_KEY), None) or m.metadata_props.add()
    entry.key, entry.value = QUANTIZED_TENSORS_KEY, json.dumps(qnames, separators=(",", ":"))
    if recurrent.nodes:
        apply_dynamic(m, recurrent, inplace=True)
    return m, qnames


def _split_recurrent(plan: QuantPlan) -> tuple[QuantPlan, QuantPlan]:
    """The plan the Q/DQ rewrite writes (recurrent nodes float to it) and the recurrent nodes' own."""
    lstm = {d.node for d in plan.nodes if d.op_type == "LSTM" and d.action == Action.INT8_OUT_FLOAT}
    if not lstm:
        return plan, QuantPlan(plan.scheme)
    nodes = [NodeDecision(d.node, d.op_type, Action.FLOAT) if d.node in lstm else d for d in plan.nodes]
    qdq = replace(plan, nodes=nodes, weights=[w for w in plan.weights if w.node not in lstm])
    mine = QuantPlan(plan.scheme, [d for d in plan.nodes if d.node in lstm])
    mine.weights = [w for w in plan.weights if w.node in lstm]
    return qdq, mine


def _restore(m: ModelProto, originals: dict) -> None:
    """Copy back the original initializers the rewritten graph still reads; drop the graph-input entries
    (IR < 4 models list initializers as inputs) of those it no longer reads."""
    idx = GraphIndex(m.graph)
    used = set(idx.consumers) | idx.graph_outputs | idx.subgraph_refs
    have = {t.name for t in m.graph.initializer}
    for name, t in originals.items():
        if name in used and name not in have:
            m.graph.initializer.add().CopyFrom(t)
    for i in reversed(range(len(m.graph.input))):
        name = m.graph.input[i].name
        if name in originals and name not in used:
            del m.graph.input[i]
