"""Decide a W8A8 plan: which nodes run on integer kernels, where Q/DQ go, and why the rest stays float.

Regions grow from anchors (Conv/MatMul/Gemm with constant weights) through ops the runtime can run on
int8, shrink back where an int8 tensor would only be converted to float again, and lose anchors whose
compute is too small to pay for the conversions at their edges (the cost model).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from onnx import ModelProto

from qcli.calibration.observers import TensorStats
from qcli.core import fold, hostcpu
from qcli.core import qparams as qp
from qcli.core.config import QuantConfig
from qcli.core.hostcpu import CpuInfo
from qcli.core.ops import (
    ANCHORS,
    NO_INT_KERNEL,
    PASSTHROUGH,
    QLINEAR,
    TRIAL,
    anchor_problem,
    data_inputs,
    is_depthwise,
    macs_per_output,
    weight_axis,
)
from qcli.core.overrides import Precision
from qcli.core.plan import (
    NO_PROMOTION,
    Action,
    ActivationQuant,
    NodeDecision,
    Promotion,
    QuantPlan,
    Reason,
    WeightQuant,
    Why,
    reason,
)
from qcli.schemes.w8a8 import recurrent
from qcli.schemes.w8a8.regions import INT8_READERS, RegionBuilder

# Overrides-file precisions that keep a Conv/MatMul/Gemm on int8 whatever the cost model and guard say.
_INT8_FORCED = (Precision.INT8, Precision.PER_TENSOR, Precision.PER_CHANNEL)


class W8A8Planner(RegionBuilder):
    def __init__(
        self,
        model: ModelProto,
        config: QuantConfig,
        floats: set[str],
        cpu: CpuInfo | None = None,
        pinned: dict[str, Reason] | None = None,
        promotion: Promotion = NO_PROMOTION,
    ) -> None:
        """`pinned`: nodes an earlier step needs float, with the reason (e.g. a SmoothQuant scale); `promotion`:
        what measured placement tries on int8 beyond the static rule."""
        super().__init__(model, config, floats, promotion)
        self.promoted = promotion.anchors
        self.act_qtype = qp.INT8 if config.w8a8.activation_symmetric else qp.UINT8
        self.cpu = cpu or hostcpu.host()
        self.reduce_range = self.cpu.u8s8_may_saturate if config.int8.reduce_range is None else config.int8.reduce_range
        self.weight_qtype = qp.INT8_7BIT if self.reduce_range else qp.INT8
        self.macs_ratio: dict[str, float] = {}  # anchor -> MACs per element it converts (none: no conversion)
        for node in self.nodes:
            why = (pinned or {}).get(node.name) or self._anchor_reason(node)
            if why is None:
                self.anchors.add(node.name)
            elif why:
                self.fixed[node.name] = NodeDecision(node.name, node.op_type, Action.FLOAT, why)
        self.recurrent = recurrent.decide(model, config, self.idx, floats, self.reduce_range, pinned or {})

    # -- structure ---------------------------------------------------------------------------------
    def _anchor_reason(self, node) -> Reason | None | Literal[""]:
        """None: an anchor candidate. '': not a compute op. Otherwise why it stays float."""
        pattern = self.config.excluded_by(node.name, node.op_type)
        if pattern:
            return reason(Why.EXCLUDED, pattern=pattern)
        if node.op_type in NO_INT_KERNEL:
            return reason(Why.NO_INT_KERNEL, op=node.op_type)
        if node.op_type not in ANCHORS or node.domain not in ("", "ai.onnx"):
            return ""
        problem = anchor_problem(node, self.idx, lambda t: t in self.floats)
        return reason(Why.UNSUPPORTED, problem=problem) if problem else None

    def watch_list(self) -> list[str]:
        """Float activations around every op that could end up on int8 (measured placement's trials included):
        what calibration must observe."""
        ops = ANCHORS | QLINEAR | PASSTHROUGH | TRIAL | fold.CLAMPS | fold.AFFINE
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

    def _too_cheap(self, node, act, stats, produced_int8: set[str]) -> Reason | None:
        ins = self._data_ins(node)
        conv = sum(self._numel(t, stats) for t in ins if not self.idx.is_const(t) and t not in produced_int8)
        out = self._out(node, act)
        if act[node.name] == Action.INT8 and self._float_readers(out, act):
            conv += self._numel(out, stats)
        if conv == 0:
            self.macs_ratio.pop(node.name, None)
            return None
        x_shape = stats[ins[0]].shape if ins[0] in stats else ()
        macs = macs_per_output(node, self.idx, x_shape) * self._numel(node.output[0], stats)
        ratio = macs / conv
        self.macs_ratio[node.name] = ratio
        if ratio < self.config.macs_threshold:
            return reason(Why.SPEED, macs_per_conversion=ratio, threshold=self.config.macs_threshold)
        return None

    # -- the plan ----------------------------------------------------------------------------------
    def plan(self, stats: dict[str, TensorStats], act_sqnr: dict[str, float] | None = None) -> QuantPlan:
        """`act_sqnr` (tensor -> dB, from sensitivity.py) enables the accuracy guard."""
        anchors: set[str] = set()
        dropped: dict[str, Reason] = {}
        floor = self.config.w8a8.min_activation_sqnr
        for n in self.anchors:
            node = self.by_name[n]
            ins = self._data_ins(node)
            missing = [t for t in ins + [node.output[0]] if self._is_float(t) and t not in stats]
            forced = self.config.precision_of(n, node.op_type) in _INT8_FORCED
            weak = [] if forced else [t for t in ins if (act_sqnr or {}).get(t, float("inf")) < floor]
            if missing:
                dropped[n] = reason(Why.UNOBSERVED, tensor=missing[0])
            elif weak:
                dropped[n] = reason(Why.ACCURACY, tensor=weak[0], sqnr_db=act_sqnr[weak[0]], threshold=floor)
            else:
                anchors.add(n)
        while True:
            act = self._region(anchors)
            cheap = {}
            produced = {
                t
                for n in self.nodes
                if act.get(n.name) in (Action.INT8, Action.PASSTHROUGH, Action.FOLDED)
                for t in self.int8_outputs(n, act[n.name])
            }
            for node in self.nodes:
                if node.name not in anchors:
                    continue
                why = self._too_cheap(node, act, stats, produced)  # recorded for forced anchors too
                forced = node.name in self.promoted or self.config.precision_of(node.name, node.op_type) in _INT8_FORCED
                if why and not forced:
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
        p = qp.from_range(st.rmin, st.rmax, self.act_qtype, self.config.w8a8.activation_symmetric)
        return fold.q_params(
            self._chain(end, act), self.idx, float(p.scale), int(p.zero_point), self.act_qtype.qmin, self.act_qtype.qmax
        )

    def _build(self, act: dict[str, Action], dropped: dict[str, Reason], stats) -> QuantPlan:
        plan = QuantPlan(scheme=self.config.scheme.value)
        for node in self.nodes:
            precision = self.config.precision_of(node.name, node.op_type)
            if precision is not None:
                plan.overrides[node.name] = precision.value
        for node in self.nodes:
            a = act.get(node.name)
            if a is not None:
                plan.nodes.append(NodeDecision(node.name, node.op_type, a))
            elif node.name in dropped:
                plan.nodes.append(NodeDecision(node.name, node.op_type, Action.FLOAT, dropped[node.name]))
            else:
                d = self.fixed.get(node.name) or self.recurrent.get(node.name, (None,))[0]
                plan.nodes.append(d or NodeDecision(node.name, node.op_type, Action.FLOAT))
        plan.weights += [w for _, weights in self.recurrent.values() for w in weights]  # DynamicQuantizeLSTM
        plan.notes += recurrent.notes(self.recurrent)
        for node in self.nodes:
            a = act.get(node.name)
            if a in INT8_READERS:
                for t in self._data_ins(node):
                    if self._is_float(t):
                        self._add_act(plan, t, stats)
                    elif a == Action.PASSTHROUGH and self._const_table(node):
                        table = self.idx.const(t)
                        self._add_act(
                            plan, t, {t: TensorStats(float(table.min()), float(table.max()), (), 0, "constant")}
                        )
                self._add_weights(plan, node)
            if a in (Action.INT8, Action.PASSTHROUGH, Action.FOLDED) and self._out(node, act) == node.output[0]:
                share = None
                if a == Action.PASSTHROUGH:
                    src = plan.activations[node.input[0]]
                    share = src.share or src.tensor
                q = self._chain_q(node, act, stats) if a == Action.FOLDED else None
                for t in self.int8_outputs(node, a):  # every output of a Split shares its input's parameters
                    self._add_act(plan, t, stats, share, q)
        plan.macs_per_conversion = {
            n: r for n, r in self.macs_ratio.items() if act.get(n) in (Action.INT8, Action.INT8_OUT_FLOAT)
        }
        self._explain(plan)
        return plan

    def _explain(self, plan: QuantPlan) -> None:
        """The effective configuration (reduce range: value and why) and plan-wide notes."""
        if self.config.int8.reduce_range is None:
            why = (
                f"auto: {self.cpu.describe()} "
                + ("may saturate" if self.reduce_range else "cannot saturate")
                + " uint8 x int8 products with 8-bit weights"
            )
        else:
            why = "--reduce-range" if self.config.int8.reduce_range else "--no-reduce-range"
        plan.decisions["reduce_range"] = {"value": self.reduce_range, "why": why, "cpu": self.cpu.to_dict()}
        if any(w.qtype == qp.INT8_7BIT.name for w in plan.weights):
            plan.notes.append(f"weights use 7 bits (-64..63) ({why}); depthwise convs keep 8")
        widened = [w for w in plan.weights if w.scale_floor is not None]
        if widened:
            plan.notes.append(
                "weight scales widened so the int32 bias fits (near-zero weights with a large bias): "
                + ", ".join(w.node for w in widened)
            )
        if not any(d.action != Action.FLOAT for d in plan.nodes):
            # (compute inside If/Loop/Scan bodies: schemes/branches.py quantizes it and says so)
            where = ""
            if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in self.nodes):
                where = "; the model already contains QuantizeLinear/DequantizeLinear: is it quantized already?"
            plan.warnings.append(f"nothing was quantized{where}")

    def _add_act(self, plan: QuantPlan, t: str, stats, share: str | None = None, q: tuple | None = None) -> None:
        if t in plan.activations:
            return
        if share:
            s = plan.activations[share]
            plan.activations[t] = ActivationQuant(t, s.scale, s.zero_point, s.qtype, share, method=s.method)
            return
        st = stats[t]
        p = qp.from_range(st.rmin, st.rmax, self.act_qtype, self.config.w8a8.activation_symmetric)
        q_scale, q_zp = q if q else (None, None)
        plan.activations[t] = ActivationQuant(
            t,
            float(p.scale),
            int(p.zero_point),
            self.act_qtype.name,
            q_scale=q_scale,
            q_zero_point=q_zp,
            method=st.method,
            range=(st.rmin, st.rmax),
        )

    def _add_weights(self, plan: QuantPlan, node) -> None:
        for i, t in enumerate(node.input):
            if not t or not self.idx.is_float_const(t):
                continue
            if node.op_type in ANCHORS and i == 1:
                shape = tuple(self.idx.inits[t].dims)
                granularity = self.config.precision_of(node.name, node.op_type)
                per_channel = granularity == Precision.PER_CHANNEL or (
                    self.config.int8.per_channel and granularity != Precision.PER_TENSOR
                )
                axis = weight_axis(node, shape) if per_channel else None
                # Depthwise int8 kernels accumulate in 32 bits: full 8-bit weights cannot saturate there.
                qtype = qp.INT8 if is_depthwise(node, shape) else self.weight_qtype
                floor = self._bias_scale_floor(plan, node, qtype, axis)
                plan.weights.append(
                    WeightQuant(
                        node.name,
                        i,
                        t,
                        qtype.name,
                        "weight",
                        axis,
                        algo=self.config.weight_only.weight_algo.value,
                        scale_floor=floor,
                    )
                )
            elif node.op_type in ANCHORS and i == 2:
                plan.weights.append(WeightQuant(node.name, i, t, qp.INT32.name, "bias"))
            elif node.op_type in self.qlinear:
                plan.weights.append(
                    WeightQuant(
                        node.name, i, t, self.act_qtype.name, "const", symmetric=self.config.w8a8.activation_symmetric
                    )
                )

    def _bias_scale_floor(self, plan: QuantPlan, node, qtype: qp.QType, axis: int | None) -> tuple | None:
        """Per-channel floor on the weight scale where bias / (x_scale * w_scale) would leave int32."""
        if len(node.input) < 3 or not node.input[2] or node.input[0] not in plan.activations:
            return None
        floor = qp.bias_scale_floor(self.idx.const(node.input[2]), plan.activations[node.input[0]].scale)
        w = qp.weight_qparams(self.idx.const(node.input[1]), qtype, True, axis)
        scale = np.broadcast_to(np.abs(w.scale), floor.shape)
        return tuple(float(f) for f in floor) if np.any(scale < floor) else None
