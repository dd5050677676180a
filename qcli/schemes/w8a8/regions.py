"""Int8 regions: grown from anchors through ops the runtime runs on int8, shrunk where int8 would only be
converted back to float. Pure graph structure: which nodes run how, for a given set of anchors."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from qcli.core import fold
from qcli.core.config import QuantConfig
from qcli.core.graph import GraphIndex
from qcli.core.ops import (
    ANCHORS,
    INT_OUTPUT,
    MULTI_OUTPUT,
    NATIVE_INT8,
    PASSTHROUGH,
    QLINEAR,
    SHRINKING,
    TRIAL_PASSTHROUGH,
    TRIAL_QLINEAR,
    data_inputs,
)
from qcli.core.plan import NO_PROMOTION, Action, Promotion

INT8_READERS = (Action.INT8, Action.INT8_OUT_FLOAT, Action.PASSTHROUGH)


class RegionBuilder:
    def __init__(
        self, model: ModelProto, config: QuantConfig, floats: set[str], promotion: Promotion = NO_PROMOTION
    ) -> None:
        self.config = config
        self.passthrough = PASSTHROUGH | (TRIAL_PASSTHROUGH & promotion.ops)
        self.qlinear = QLINEAR | (TRIAL_QLINEAR & promotion.ops)
        self.nodes = list(model.graph.node)
        self.by_name = {n.name: n for n in self.nodes}
        self.idx = GraphIndex(model.graph)
        self.opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 1)
        self.floats = floats
        self.anchors: set[str] = set()  # Conv/MatMul/Gemm that may run on int8 (set by the planner)
        self.no_fold: set[str] = set()  # folds whose zero-point shift would leave the integer range
        self.fixed: dict = {}  # node -> NodeDecision: float whatever the data says (set by the planner)

    def _is_float(self, t: str) -> bool:
        return t in self.floats and not self.idx.is_const(t)

    def _data_ins(self, node) -> list[str]:
        return [node.input[i] for i in data_inputs(node) if i < len(node.input) and node.input[i]]

    def _region(self, anchors: set[str]) -> dict[str, Action]:
        act: dict[str, Action] = {}
        qt: set[str] = set()  # tensors produced on int8
        for node in self.nodes:
            n, op, ins = node.name, node.op_type, self._data_ins(node)
            if self.config.excluded_by(n, op) or n in self.fixed:
                continue
            if n in anchors:
                act[n] = Action.INT8
            elif (op in fold.CLAMPS or op in fold.AFFINE) and n not in self.no_fold and self._foldable(node, act):
                act[n] = Action.FOLDED
            elif op in self.passthrough and ins and self._passes_int8(node, qt):
                act[n] = Action.PASSTHROUGH
            elif (
                op in self.qlinear
                and any(t in qt for t in ins)
                and all(t in qt or self.idx.is_float_const(t) for t in ins)
            ):
                act[n] = Action.INT8
            elif op in INT_OUTPUT and ins and ins[0] in qt:
                act[n] = Action.INT8_OUT_FLOAT  # indices: nothing to quantize
                continue
            else:
                continue
            qt.update(self.int8_outputs(node, act[n]))
        self._shrink(act)
        return act

    def _passes_int8(self, node, qt: set[str]) -> bool:
        """A data-movement op whose data input is int8 (or a constant table) and whose other inputs are not
        activations. Pad is written on the integers: its value must be an input of the data's type (opset 11)."""
        outputs = [o for o in node.output if o]
        return (
            (node.input[0] in qt or self._const_table(node))
            and self._rest_not_activations(node)
            and (len(outputs) == 1 or (node.op_type in MULTI_OUTPUT and len(outputs) == len(node.output)))
            and (node.op_type not in NATIVE_INT8 or self._native_ok(node))
        )

    def _native_ok(self, node) -> bool:
        """Pad on the integers: int8 types from opset 11, and a pad value known now (it is quantized here)."""
        value = node.input[2] if len(node.input) > 2 else ""
        return self.opset >= 11 and (not value or self.idx.is_float_const(value))

    @staticmethod
    def int8_outputs(node, action: Action) -> list[str]:
        """The outputs an int8 node writes on int8: all of a passthrough's (Split), else the first."""
        return [o for o in node.output if o] if action == Action.PASSTHROUGH else [node.output[0]]

    def _foldable(self, node, act: dict[str, Action]) -> bool:
        """Relu/Clip/Mul/Add right after an int8 producer (or after ops already folded into it)."""
        x = fold.data_input(node, self.idx)
        prod = self.idx.producer.get(x)
        if prod is None or len(self.idx.consumers[x]) != 1 or self.idx.escapes(x):
            return False
        if act.get(prod.name) == Action.INT8 and prod.op_type in ANCHORS | self.qlinear:
            after_clamp = False
        elif act.get(prod.name) == Action.FOLDED:
            after_clamp = any(n.op_type in fold.CLAMPS for n in self._chain(prod, act))
        else:
            return False
        if self.config.w8a8.activation_symmetric and node.op_type not in ("Mul", "Div"):
            return False  # int8 symmetric: Q does not saturate at 0 and the zero point stays 0
        return fold.foldable_op(node, self.idx, after_clamp)

    def _chain(self, node, act: dict[str, Action]) -> list:
        """Folded ops from the one next to the int8 producer up to `node` (inclusive)."""
        return fold.chain(node, lambda n: act.get(n.name) == Action.FOLDED, self.idx)

    def _const_table(self, node) -> bool:
        """A Gather from a constant float table used by nothing else (an embedding): store it int8."""
        if node.op_type != "Gather":
            return False
        t = node.input[0]
        return (
            self.idx.is_float_const(t)
            and len(self.idx.consumers[t]) == 1
            and int(np.prod(self.idx.inits[t].dims)) >= 1024
        )

    def _rest_not_activations(self, node) -> bool:
        return all(not self._is_float(t) for t in node.input[1:] if t)

    def _int8_readers(self, t: str, act: dict[str, Action]) -> list:
        return [c for c in self.idx.consumers.get(t, []) if act.get(c.name) in INT8_READERS and t in self._data_ins(c)]

    def _float_readers(self, t: str, act: dict[str, Action]) -> bool:
        readers = self.idx.consumers.get(t, [])
        return self.idx.escapes(t) or len(self._int8_readers(t, act)) < len(readers)

    def _out(self, node, act: dict[str, Action]) -> str:
        """The tensor an int8 node finally writes (after the ops folded into its Q)."""
        t = node.output[0]
        while True:
            cons = self.idx.consumers.get(t, [])
            if len(cons) != 1 or act.get(cons[0].name) != Action.FOLDED:
                return t
            t = cons[0].output[0]

    def _shrink(self, act: dict[str, Action]) -> None:
        """Drop int8 ops whose output only goes back to float; MatMul/Gemm then write float directly."""
        changed = True
        while changed:
            changed = False
            for node in reversed(self.nodes):
                a = act.get(node.name)
                keep = node.op_type in SHRINKING or self._const_table(node)  # int8 output is smaller anyway
                if a is None or node.name in self.anchors or a == Action.FOLDED or keep:
                    continue
                outs = self.int8_outputs(node, a) if a == Action.PASSTHROUGH else [self._out(node, act)]
                if not any(self._int8_readers(t, act) for t in outs):
                    del act[node.name]
                    changed = True
        for node in self.nodes:
            if node.op_type in ("MatMul", "Gemm") and act.get(node.name) == Action.INT8:
                if not self._int8_readers(self._out(node, act), act):
                    act[node.name] = Action.INT8_OUT_FLOAT
        # An op can only fold into the Q of a producer that still writes int8 (topological order: a
        # chain whose head was undone is undone along with it).
        for node in self.nodes:
            if act.get(node.name) == Action.FOLDED:
                prod = self.idx.producer[fold.data_input(node, self.idx)]
                if act.get(prod.name) not in (Action.INT8, Action.FOLDED):
                    del act[node.name]
