"""Decide a W8A8 plan: which nodes run on integer kernels, where Q/DQ go, and why the rest stays float.

Regions grow from anchors (Conv/MatMul/Gemm with constant weights) through ops the runtime can run on
int8, shrink back where an int8 tensor would only be converted to float again, and lose anchors whose
compute is too small to pay for the conversions at their edges (the cost model).
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from . import fold
from . import qparams as qp
from .config import QuantConfig
from .hostcpu import u8s8_may_saturate
from .observers import TensorStats
from .ops import (
    ANCHORS,
    NO_INT_KERNEL,
    PASSTHROUGH,
    QLINEAR,
    anchor_problem,
    data_inputs,
    is_depthwise,
    macs_per_output,
    weight_axis,
)
from .plan import Action, ActivationQuant, NodeDecision, QuantPlan, WeightQuant
from .regions import INT8_READERS, RegionBuilder


class W8A8Planner(RegionBuilder):
    def __init__(self, model: ModelProto, config: QuantConfig, floats: set[str]) -> None:
        super().__init__(model, config, floats)
        self.act_qtype = qp.INT8 if config.activation_symmetric else qp.UINT8
        self.reduce_range = u8s8_may_saturate() if config.reduce_range is None else config.reduce_range
        self.weight_qtype = qp.INT8_7BIT if self.reduce_range else qp.INT8
        self.fixed: dict[str, NodeDecision] = {}  # nodes that are float whatever the data says
        for node in self.nodes:
            reason = self._anchor_reason(node)
            if reason is None:
                self.anchors.add(node.name)
            elif reason:
                self.fixed[node.name] = NodeDecision(node.name, node.op_type, Action.FLOAT, reason)

    # -- structure ---------------------------------------------------------------------------------
    def _anchor_reason(self, node) -> str | None:
        """None: an anchor candidate. '': not a compute op. Otherwise why it stays float."""
        if node.name in self.config.exclude or node.op_type in self.config.exclude:
            return "excluded by --exclude"
        if node.op_type in NO_INT_KERNEL:
            return NO_INT_KERNEL[node.op_type]
        if node.op_type not in ANCHORS or node.domain not in ("", "ai.onnx"):
            return ""
        return anchor_problem(node, self.idx, lambda t: t in self.floats)

    def watch_list(self) -> list[str]:
        """Float activations around every op that could end up on int8: what calibration must observe."""
        ops = ANCHORS | QLINEAR | PASSTHROUGH | fold.CLAMPS | fold.AFFINE
        out: list[str] = []
        for node in self.nodes:
            if node.op_type in ops and node.name not in self.fixed:
                ins = [node.input[i] for i in data_inputs(node) if i < len(node.input)]
                out += [t for t in ins + list(node.output[:1]) if t and self._is_float(t)]
        return list(dict.fromkeys(out))

    # -- cost model --------------------------------------------------------------------------------
    def _numel(self, t: str, stats: dict[str, TensorStats]) -> int:
        s = stats.get(t)
        return int(np.prod(s.shape)) if s and s.shape else 0

    def _too_cheap(self, node, act, stats, produced_int8: set[str]) -> str | None:
        ins = self._data_ins(node)
        conv = sum(self._numel(t, stats) for t in ins if not self.idx.is_const(t) and t not in produced_int8)
        out = self._out(node, act)
        if act[node.name] == Action.INT8 and self._float_readers(out, act):
            conv += self._numel(out, stats)
        if conv == 0:
            return None
        x_shape = stats[ins[0]].shape if ins[0] in stats else ()
        macs = macs_per_output(node, self.idx, x_shape) * self._numel(node.output[0], stats)
        ratio = macs / conv
        if ratio < self.config.min_macs_per_conversion:
            return (
                f"kept float for speed: {ratio:.1f} MACs per element converted to/from int8 "
                f"(< {self.config.min_macs_per_conversion:g}), Q/DQ would cost more than int8 wins"
            )
        return None

    # -- the plan ----------------------------------------------------------------------------------
    def plan(self, stats: dict[str, TensorStats], act_sqnr: dict[str, float] | None = None) -> QuantPlan:
        """`act_sqnr` (tensor -> dB, from sensitivity.py) enables the accuracy guard."""
        anchors, dropped = set(), {}
        floor = self.config.min_activation_sqnr
        for n in self.anchors:
            node = self.by_name[n]
            ins = self._data_ins(node)
            missing = [t for t in ins + [node.output[0]] if self._is_float(t) and t not in stats]
            weak = [t for t in ins if (act_sqnr or {}).get(t, float("inf")) < floor]
            if missing:
                dropped[n] = f"tensor {missing[0]!r} was not observed during calibration"
            elif weak:
                dropped[n] = (
                    f"kept float for accuracy: its input {weak[0]!r} quantizes to {act_sqnr[weak[0]]:.1f} dB "
                    f"per tensor (< {floor:g}; a few outliers set its range)"
                )
            else:
                anchors.add(n)
        while True:
            act = self._region(anchors)
            cheap = {}
            produced = {
                n.output[0] for n in self.nodes if act.get(n.name) in (Action.INT8, Action.PASSTHROUGH, Action.FOLDED)
            }
            for node in self.nodes:
                if node.name in anchors:
                    why = self._too_cheap(node, act, stats, produced)
                    if why:
                        cheap[node.name] = why
            unfoldable = {n.name for n in self._chain_ends(act) if self._chain_q(n, act, stats) is None}
            if not cheap and not unfoldable:
                break
            anchors -= cheap.keys()
            dropped.update(cheap)
            self.no_fold |= {
                x.name for n in unfoldable for x in self._chain(self.by_name[n], act) if x.op_type == "Add"
            }
        return self._build(act, dropped, stats)

    def _chain_ends(self, act: dict[str, Action]) -> list:
        return [n for n in self.nodes if act.get(n.name) == Action.FOLDED and self._out(n, act) == n.output[0]]

    def _chain_q(self, end, act: dict[str, Action], stats) -> tuple[float, int] | None:
        """Scale and zero point for the Q that writes a folded chain's final tensor."""
        st = stats[end.output[0]]
        p = qp.from_range(st.rmin, st.rmax, self.act_qtype, self.config.activation_symmetric)
        return fold.q_params(
            self._chain(end, act), self.idx, float(p.scale), int(p.zero_point), self.act_qtype.qmin, self.act_qtype.qmax
        )

    def _build(self, act: dict[str, Action], dropped: dict[str, str], stats) -> QuantPlan:
        plan = QuantPlan(scheme=self.config.scheme.value)
        for node in self.nodes:
            a = act.get(node.name)
            if a is not None:
                plan.nodes.append(NodeDecision(node.name, node.op_type, a))
            elif node.name in dropped:
                plan.nodes.append(NodeDecision(node.name, node.op_type, Action.FLOAT, dropped[node.name]))
            else:
                d = self.fixed.get(node.name)
                plan.nodes.append(d or NodeDecision(node.name, node.op_type, Action.FLOAT))
        for node in self.nodes:
            a = act.get(node.name)
            if a in INT8_READERS:
                for t in self._data_ins(node):
                    if self._is_float(t):
                        self._add_act(plan, t, stats)
                    elif a == Action.PASSTHROUGH and self._const_table(node):
                        table = self.idx.const(t)
                        self._add_act(plan, t, {t: TensorStats(float(table.min()), float(table.max()), (), 0)})
                self._add_weights(plan, node)
            if a in (Action.INT8, Action.PASSTHROUGH, Action.FOLDED) and self._out(node, act) == node.output[0]:
                share = None
                if a == Action.PASSTHROUGH:
                    src = plan.activations[node.input[0]]
                    share = src.share or src.tensor
                q = self._chain_q(node, act, stats) if a == Action.FOLDED else None
                self._add_act(plan, node.output[0], stats, share, q)
        self._explain(plan)
        return plan

    def _explain(self, plan: QuantPlan) -> None:
        """Plan-wide notes: 7-bit weights, and why nothing was quantized when that is the outcome."""
        if any(w.qtype == qp.INT8_7BIT.name for w in plan.weights):
            how = (
                "chosen by --reduce-range"
                if self.config.reduce_range
                else "this x86 CPU has no VNNI: 8-bit weights would saturate uint8 x int8 products"
            )
            plan.notes.append(f"weights use 7 bits (-64..63) ({how}); depthwise convs keep 8")
        if not any(d.action != Action.FLOAT for d in plan.nodes):
            nested = [n.name for n in self.nodes if any(a.type in (5, 10) for a in n.attribute)]  # GRAPH(S)
            where = (
                f"; the compute is inside the subgraphs of {', '.join(nested[:3])}, which qcli passes "
                "through unchanged (quantizing inside If/Loop/Scan is not supported yet)"
                if nested
                else ""
            )
            if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in self.nodes):
                where += "; the model already contains QuantizeLinear/DequantizeLinear: is it quantized already?"
            plan.notes.append(f"nothing was quantized{where}")

    def _add_act(self, plan: QuantPlan, t: str, stats, share: str | None = None, q: tuple | None = None) -> None:
        if t in plan.activations:
            return
        if share:
            s = plan.activations[share]
            plan.activations[t] = ActivationQuant(t, s.scale, s.zero_point, s.qtype, share)
            return
        st = stats[t]
        p = qp.from_range(st.rmin, st.rmax, self.act_qtype, self.config.activation_symmetric)
        q_scale, q_zp = q if q else (None, None)
        plan.activations[t] = ActivationQuant(
            t, float(p.scale), int(p.zero_point), self.act_qtype.name, q_scale=q_scale, q_zero_point=q_zp
        )

    def _add_weights(self, plan: QuantPlan, node) -> None:
        for i, t in enumerate(node.input):
            if not t or not self.idx.is_const(t) or self.idx.inits[t].data_type != 1:
                continue
            if node.op_type in ANCHORS and i == 1:
                shape = tuple(self.idx.inits[t].dims)
                axis = weight_axis(node, shape) if self.config.per_channel else None
                # Depthwise int8 kernels accumulate in 32 bits: full 8-bit weights cannot saturate there.
                qtype = qp.INT8 if is_depthwise(node, shape) else self.weight_qtype
                plan.weights.append(
                    WeightQuant(node.name, i, t, qtype.name, "weight", axis, algo=self.config.weight_algo.value)
                )
            elif node.op_type in ANCHORS and i == 2:
                plan.weights.append(WeightQuant(node.name, i, t, "int32", "bias"))
            elif node.op_type in QLINEAR:
                plan.weights.append(
                    WeightQuant(
                        node.name, i, t, self.act_qtype.name, "const", symmetric=self.config.activation_symmetric
                    )
                )
