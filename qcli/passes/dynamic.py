"""Apply a dynamic plan: weights become int8 initializers, activations are quantized at run time.

MatMul, and Gemm (written as MatMul plus its bias Add):
    x -> DynamicQuantizeLinear -> (xq, xs, xz)                 one per float input, shared by its readers
    MatMulInteger(xq, wq, xz) -> Cast(float) -> Mul(., Mul(xs, ws)) [-> Add(., bias)] -> y
which onnxruntime fuses into com.microsoft MatMulIntegerToFloat, or DynamicQuantizeMatMul where the
DynamicQuantizeLinear has one reader; ws is a scalar or one scale per column, the weight zero point is 0.
Conv: ConvInteger(xq, wq, xz, 128) with uint8 weights symmetric around 128 (its CPU kernel takes uint8 weights
and one zero point), per-channel scales applied after the Cast, bias added in float.
Gather from a constant table: Gather(int8 table) -> DequantizeLinear, per column (axis -1) or per tensor.
LSTM: com.microsoft DynamicQuantizeLSTM, W and R transposed to [directions, in, 4*hidden], int8 with zero
points 0, scales [directions] (per tensor) or [directions, 4*hidden] (per channel).
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from qcli.core import qparams as qp
from qcli.core.errors import InternalError
from qcli.core.graph import GraphIndex, Namer, attr
from qcli.core.plan import Action, QuantPlan, WeightQuant
from qcli.io.model_io import onnx_opset
from qcli.passes.preprocess import drop_unused_initializers
from qcli.weights import WEIGHT_ALGOS

MS = "com.microsoft"
MIN_OPSET = 11  # DynamicQuantizeLinear
_REWRITE = {"MatMul": "matmul", "Gemm": "matmul", "Conv": "conv", "LSTM": "lstm", "Gather": "gather"}


def apply_dynamic(model: ModelProto, plan: QuantPlan, inplace: bool = False) -> ModelProto:
    """The model with the plan's nodes on integer kernels. `model` is left as it is unless `inplace`."""
    need = 13 if any(w.axis is not None and w.input_index == 0 for w in plan.weights) else MIN_OPSET
    if onnx_opset(model) < need:
        raise InternalError(
            f"internal error: the dynamic plan needs opset >= {need}, the model has {onnx_opset(model)}"
        )
    m = model if inplace else ModelProto()
    if not inplace:
        m.CopyFrom(model)
    _Rewriter(m, plan).run()
    return m


class _Rewriter:
    def __init__(self, m: ModelProto, plan: QuantPlan) -> None:
        self.m = m
        self.idx = GraphIndex(m.graph)
        self.name = Namer(m.graph)
        self.todo = {d.node for d in plan.nodes if d.action in (Action.INT8_OUT_FLOAT, Action.PASSTHROUGH)}
        self.weights = {(w.node, w.input_index): w for w in plan.weights}
        self.dq: dict[str, list[str]] = {}  # float tensor -> its DynamicQuantizeLinear outputs
        self.wcache: dict[tuple, tuple[str, str, str | None]] = {}
        self.out: list = []
        self.node_name = ""

    def init(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def emit(self, op: str, ins: list[str], outs: list[str] | None = None, **attrs) -> str:
        outs = outs or [self.name(op[:2].lower())]
        name = self.name.fresh(f"{self.node_name}/{op}")
        self.out.append(helper.make_node(op, ins, outs, name=name, **attrs))
        return outs[0]

    def dynamic_q(self, t: str) -> list[str]:
        if t not in self.dq:
            self.dq[t] = [self.name("xq"), self.name("xs"), self.name("xz")]
            self.emit("DynamicQuantizeLinear", [t], self.dq[t])
        return self.dq[t]

    def run(self) -> None:
        g = self.m.graph
        for node in g.node:
            if node.name not in self.todo:
                self.out.append(node)
                continue
            self.node_name = node.name
            w = self.weights.get((node.name, 0 if node.op_type == "Gather" else 1))
            if w is None:
                raise InternalError(f"internal error: the plan quantizes {node.name} but has no weight for it")
            getattr(self, _REWRITE[node.op_type])(node, w)
        del g.node[:]
        g.node.extend(self.out)
        if any(n.domain == MS for n in g.node) and not any(o.domain == MS for o in self.m.opset_import):
            self.m.opset_import.append(helper.make_opsetid(MS, 1))
        drop_unused_initializers(self.m)

    # -- weights ----------------------------------------------------------------------------------------
    def _quantize(self, w: WeightQuant, value: np.ndarray) -> tuple[np.ndarray, qp.QParams]:
        return WEIGHT_ALGOS.get(w.algo)(value, qp.QTYPES[w.qtype], w.symmetric, w.axis, None)

    def matmul_weight(self, node, w: WeightQuant) -> tuple[str, str]:
        """int8 [K, N] and its scale (scalar or [N]); Gemm's alpha is folded in, transB undone."""
        trans = node.op_type == "Gemm" and bool(attr(node, "transB", 0))
        alpha = float(attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        key = (w.tensor, w.qtype, w.axis, w.algo, trans, alpha)
        if key not in self.wcache:
            value = self.idx.const(w.tensor).astype(np.float32)
            if alpha != 1.0:
                value = (value * np.float32(alpha)).astype(np.float32)
            q, p = self._quantize(w, value)
            _check_zero(p, 0, w)
            q = np.ascontiguousarray(q.T) if trans else q
            self.wcache[key] = (self.init("w", q), self.init("ws", p.scale.astype(np.float32)), None)
        wq, ws, _ = self.wcache[key]
        return wq, ws

    # -- ops ----------------------------------------------------------------------------------------------
    def matmul(self, node, w: WeightQuant) -> None:
        xq, xs, xz = self.dynamic_q(node.input[0])
        wq, ws = self.matmul_weight(node, w)
        acc = self.emit("MatMulInteger", [xq, wq, xz])
        scale = self.emit("Mul", [xs, ws])
        c = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        y = self.name("mm") if c else node.output[0]
        self.emit("Mul", [self.emit("Cast", [acc], to=TensorProto.FLOAT), scale], [y])
        if c:
            beta = np.float32(attr(node, "beta", 1.0))
            if self.idx.is_const(c):
                value = self.idx.const(c).astype(np.float32)
                c = self.init("c", (value * beta).astype(np.float32)) if beta != 1.0 else c
            elif beta != 1.0:
                c = self.emit("Mul", [c, self.init("beta", np.array(beta, np.float32))])
            self.emit("Add", [y, c], [node.output[0]])

    def conv(self, node, w: WeightQuant) -> None:
        xq, xs, xz = self.dynamic_q(node.input[0])
        key = (w.tensor, w.qtype, w.axis, w.algo)
        rank = len(self.idx.inits[w.tensor].dims)
        if key not in self.wcache:
            q, p = self._quantize(w, self.idx.const(w.tensor).astype(np.float32))
            _check_zero(p, 128, w)
            scale = p.scale.astype(np.float32).reshape((1, -1) + (1,) * (rank - 2) if p.scale.size > 1 else ())
            zp = self.init("wz", np.array(128, np.uint8))
            self.wcache[key] = (self.init("w", q), self.init("ws", scale), zp)
        wq, ws, wz = self.wcache[key]
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        acc = self.emit("ConvInteger", [xq, wq, xz, wz], **conv_attrs)
        scale = self.emit("Mul", [xs, ws])
        has_bias = len(node.input) > 2 and node.input[2]
        y = self.name("cv") if has_bias else node.output[0]
        self.emit("Mul", [self.emit("Cast", [acc], to=TensorProto.FLOAT), scale], [y])
        if has_bias:
            b = self.idx.const(node.input[2]).astype(np.float32).reshape((1, -1) + (1,) * (rank - 2))
            self.emit("Add", [y, self.init("b", b)], [node.output[0]])

    def gather(self, node, w: WeightQuant) -> None:
        """Gather(int8 table) -> DequantizeLinear: per column (axis -1 of the rows), or per tensor."""
        key = (w.tensor, w.qtype, w.axis, w.algo)
        if key not in self.wcache:
            q, p = self._quantize(w, self.idx.const(w.tensor).astype(np.float32))
            _check_zero(p, 0, w)
            self.wcache[key] = (self.init("t", q), self.init("ts", p.scale.astype(np.float32)), None)
        table, scale, _ = self.wcache[key]
        rows = self.emit(
            "Gather", [table, *node.input[1:]], **{a.name: helper.get_attribute_value(a) for a in node.attribute}
        )
        self.emit("DequantizeLinear", [rows, scale], [node.output[0]], **({"axis": -1} if w.axis is not None else {}))

    def lstm(self, node, w: WeightQuant) -> None:
        ins = list(node.input) + [""] * (8 - len(node.input))
        qs = []
        for i in (1, 2):
            q, scale = _lstm_weight(self.idx.const(node.input[i]), self.weights[(node.name, i)], self._quantize)
            qs.append((self.init("w", q), self.init("ws", scale), self.init("wz", np.zeros(scale.shape, np.int8))))
        (wq, ws, wz), (rq, rs, rz) = qs
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
        ins = [ins[0], wq, rq, *ins[3:8], ws, wz, rs, rz]
        self.emit("DynamicQuantizeLSTM", ins, list(node.output), domain=MS, **attrs)


def _lstm_weight(value: np.ndarray, w: WeightQuant, quantize) -> tuple[np.ndarray, np.ndarray]:
    """LSTM W [D, 4H, I] (or R [D, 4H, H]) -> int8 [D, I, 4H] and scales [D, 4H] (w.axis 1: per direction
    and gate row) or [D] (w.axis 0: per direction)."""
    d, rows, cols = value.shape
    flat = value.astype(np.float32).reshape((d * rows, cols) if w.axis == 1 else (d, rows * cols))
    q, p = quantize(WeightQuant(w.node, w.input_index, w.tensor, w.qtype, w.role, 0, algo=w.algo), flat)
    _check_zero(p, 0, w)
    q = np.ascontiguousarray(q.reshape(d, rows, cols).transpose(0, 2, 1))
    return q, p.scale.astype(np.float32).reshape((d, rows) if w.axis == 1 else (d,))


def _check_zero(p: qp.QParams, zero: int, w: WeightQuant) -> None:
    """The integer kernels take one weight zero point: symmetric quantization must give it everywhere."""
    if np.any(p.zero_point.astype(np.int32) != zero):
        raise InternalError(f"internal error: weight {w.tensor!r} quantized with zero points other than {zero}")
