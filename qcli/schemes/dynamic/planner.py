"""Decide a dynamic plan: int8 weights, activations quantized at run time (per tensor, uint8), no calibration.

What onnxruntime's CPU provider runs fast (passes/dynamic.py writes it):
- MatMul / Gemm with a constant 2-D weight: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul, which
  onnxruntime fuses into com.microsoft MatMulIntegerToFloat / DynamicQuantizeMatMul (per-column weight scales
  and a following bias Add included). Gemm is written as that MatMul form plus its bias.
- LSTM: com.microsoft DynamicQuantizeLSTM. GRU and RNN have no integer kernel.
- Conv: ConvInteger exists but measured no faster than float Conv (0.8-1.2x on an AVX-512 VNNI CPU, 5
  shapes): kept float unless an overrides entry forces int8.
- Gather from a constant table (embeddings): an int8 table, the gathered rows dequantized (per column with
  per-channel). No compute to win; it makes the file smaller, as onnxruntime's quantize_dynamic does (MiniLM:
  58.6 -> 22.9 MB, cosine to float 0.9854 -> 0.9844). Tables under MIN_TABLE values stay float.

Dynamic quantization converts each input at run time (min/max, then quantize); a weight op pays for that
when it does enough multiply-accumulates per converted element. Measured break-even (float MatMul vs the
fused form, M = 64 and 512 rows): MACs / (input + output elements) = K*N/(K+N) of about 16; below
MIN_MACS_PER_CONVERSION the op stays float.
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto

from qcli.core import hostcpu
from qcli.core import qparams as qp
from qcli.core.config import QuantConfig
from qcli.core.graph import GraphIndex, attr
from qcli.core.hostcpu import CpuInfo
from qcli.core.ops import weight_axis
from qcli.core.overrides import Precision
from qcli.core.plan import Action, NodeDecision, QuantPlan, Reason, WeightQuant, Why, reason
from qcli.io import model_io

MIN_MACS_PER_CONVERSION = 24.0
# DynamicQuantizeLSTM also quantizes the hidden state every step: measured 1.1x float at hidden size 32 (ratio
# 43), 0.75x at 64 (ratio 85), 0.4-0.7x above.
MIN_MACS_LSTM = 64.0
MIN_TABLE = 65536  # values in a Gather table worth an int8 copy (256 KB as float)
KERNELS = {"MatMul", "Gemm", "Conv", "LSTM"}
NO_DYNAMIC_KERNEL = {"GRU", "RNN", "ConvTranspose"}  # onnxruntime has no integer kernel for these
_FORCED = (Precision.INT8, Precision.PER_TENSOR, Precision.PER_CHANNEL)
_CONV_FLOAT = (
    "dynamic keeps Conv float: onnxruntime's ConvInteger measured no faster than float Conv (0.8-1.2x); "
    'force it with an overrides entry precision = "int8"'
)


def plan_dynamic(
    model: ModelProto, config: QuantConfig, pinned: dict[str, Reason] | None = None, cpu: CpuInfo | None = None
) -> QuantPlan:
    """`pinned`: nodes to keep float, with the reason (the accuracy-target search re-plans with more of them)."""
    idx = GraphIndex(model.graph)
    floats = model_io.float_tensors(model)
    cpu = cpu or hostcpu.host()
    reduce_range = cpu.u8s8_may_saturate if config.int8.reduce_range is None else config.int8.reduce_range
    nodes = list(model.graph.node)
    plan = QuantPlan(scheme=config.scheme.value)
    why: dict[str, Reason | str | None] = {}
    for node in nodes:
        precision = config.precision_of(node.name, node.op_type)
        if precision is not None:
            plan.overrides[node.name] = precision.value
        why[node.name] = (pinned or {}).get(node.name) or weight_problem(node, idx, floats, config)
    forced = {n.name for n in nodes if config.precision_of(n.name, n.op_type) in _FORCED}
    why.update(_too_cheap([n for n in nodes if why[n.name] is None and n.op_type != "Gather"], idx, forced))
    per_axis = model_io.onnx_opset(model) >= 13  # DequantizeLinear's axis (per-column Gather tables)
    for node in nodes:
        r = why[node.name]
        if r is None:
            action = Action.PASSTHROUGH if node.op_type == "Gather" else Action.INT8_OUT_FLOAT
            plan.nodes.append(NodeDecision(node.name, node.op_type, action))
            plan.weights += weight_quants(node, idx, config, reduce_range, per_axis)
        else:
            plan.nodes.append(NodeDecision(node.name, node.op_type, Action.FLOAT, r or None))
    _explain(plan, config, cpu, reduce_range, nodes)
    return plan


def weight_problem(node, idx: GraphIndex, floats: set[str], config: QuantConfig) -> Reason | str | None:
    """None: quantize it. '': not a weight op. Otherwise why it stays float."""
    pattern = config.excluded_by(node.name, node.op_type)
    if pattern:
        return reason(Why.EXCLUDED, pattern=pattern)
    if node.op_type in NO_DYNAMIC_KERNEL and node.domain in ("", "ai.onnx"):
        return reason(Why.NO_INT_KERNEL, op=node.op_type)
    if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and idx.is_float_const(node.input[0]):
        return _table_problem(node, idx, config.precision_of(node.name, node.op_type) in _FORCED)
    if node.op_type not in KERNELS or node.domain not in ("", "ai.onnx"):
        return ""
    ins = list(node.input)
    if ins[0] not in floats:
        return reason(Why.UNSUPPORTED, problem="input is not float32")
    weights = ins[1:3] if node.op_type == "LSTM" else ins[1:2]
    if node.op_type == "MatMul" and not idx.is_const(ins[1]):
        return reason(Why.SCHEME, problem="both inputs are activations: dynamic quantizes constant weights only")
    for w in weights:
        if not idx.is_const(w):
            return reason(Why.UNSUPPORTED, problem=f"weight {w!r} is not a constant initializer")
        if not idx.is_float_const(w):
            return reason(Why.UNSUPPORTED, problem=f"weight {w!r} is not float32")
    rank = len(idx.inits[ins[1]].dims)
    want = {"MatMul": 2, "Gemm": 2, "LSTM": 3}.get(node.op_type, rank)
    if rank != want:
        return reason(Why.UNSUPPORTED, problem=f"weight has rank {rank}; the integer kernel takes rank {want}")
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return reason(Why.UNSUPPORTED, problem="Gemm with transA=1 has no integer kernel pattern")
    if node.op_type == "LSTM" and attr(node, "layout", 0):
        return reason(Why.UNSUPPORTED, problem="LSTM with layout=1 (batch first) has no DynamicQuantizeLSTM form")
    if node.op_type == "Conv":
        if len(ins) > 2 and ins[2] and not idx.is_const(ins[2]):
            return reason(Why.UNSUPPORTED, problem="bias is not constant")
        if config.precision_of(node.name, node.op_type) not in _FORCED:
            return reason(Why.SCHEME, problem=_CONV_FLOAT)
    return None


def _table_problem(node, idx: GraphIndex, forced: bool) -> Reason | None:
    table = node.input[0]
    dims = list(idx.inits[table].dims)
    if len(dims) != 2 or attr(node, "axis", 0) not in (0, -2):
        return reason(Why.UNSUPPORTED, problem="only 2-D tables gathered along axis 0 (embeddings) are quantized")
    if any(c.op_type != "Gather" for c in idx.consumers[table]) or idx.escapes(table):
        return reason(Why.UNSUPPORTED, problem=f"table {table!r} is also read by other nodes: it stays float")
    if dims[0] * dims[1] < MIN_TABLE and not forced:
        return reason(
            Why.SCHEME, problem=f"table of {dims[0] * dims[1]} values (< {MIN_TABLE}): int8 would save little"
        )
    return None


def macs_per_conversion(node, idx: GraphIndex, readers: int = 1) -> float:
    """Multiply-accumulates per element converted at run time: the input (its DynamicQuantizeLinear shared by
    `readers` quantized ops) and the output (scaled back to float). Independent of the batch and sequence."""
    dims = list(idx.inits[node.input[1]].dims)
    if node.op_type in ("MatMul", "Gemm"):
        k, n = (dims[1], dims[0]) if node.op_type == "Gemm" and attr(node, "transB", 0) else dims
        return k * n / (k / readers + n)
    if node.op_type == "LSTM":  # per step: X and H in, 4H gate pre-activations out
        gates, inputs = dims[1], dims[2] + dims[1] // 4
        return gates * inputs / (inputs / readers + gates)
    cout, cin_g, kernel = dims[0], dims[1], float(np.prod(dims[2:]))
    cin = cin_g * attr(node, "group", 1)
    stride = float(np.prod(attr(node, "strides", [1])))
    return cin_g * kernel * cout / (cin * stride / readers + cout)


def _too_cheap(candidates: list, idx: GraphIndex, forced: set[str]) -> dict[str, Reason]:
    """Candidates whose conversions cost more than the integer kernel wins (fixed point: dropping one leaves
    fewer readers to share the input's conversion)."""
    dropped: dict[str, Reason] = {}
    while True:
        alive = [n for n in candidates if n.name not in dropped]
        readers: dict[str, int] = {}
        for n in alive:
            if n.op_type != "LSTM":  # DynamicQuantizeLSTM quantizes its input itself
                readers[n.input[0]] = readers.get(n.input[0], 0) + 1
        more = {}
        for n in alive:
            lstm = n.op_type == "LSTM"
            ratio = macs_per_conversion(n, idx, 1 if lstm else readers[n.input[0]])
            threshold = MIN_MACS_LSTM if lstm else MIN_MACS_PER_CONVERSION
            if n.name not in forced and ratio < threshold:
                more[n.name] = reason(Why.SPEED, macs_per_conversion=ratio, threshold=threshold)
        if not more:
            return dropped
        dropped.update(more)


def weight_quants(node, idx: GraphIndex, config: QuantConfig, reduce_range: bool, per_axis: bool) -> list[WeightQuant]:
    precision = config.precision_of(node.name, node.op_type)
    per_channel = precision == Precision.PER_CHANNEL or (config.int8.per_channel and precision != Precision.PER_TENSOR)
    algo = config.weight_only.weight_algo.value
    if node.op_type == "Gather":  # per column: the gathered rows are dequantized along their last axis
        axis = 1 if per_channel and per_axis else None
        return [WeightQuant(node.name, 0, node.input[0], qp.INT8.name, "weight", axis, algo=algo)]
    # uint8 x int8 products can saturate on x86 without VNNI (hostcpu.py): 7-bit weights there. ConvInteger
    # takes uint8 weights (symmetric around 128; the u8 x u8 kernel cannot saturate).
    signed = qp.INT8_7BIT if reduce_range else qp.INT8
    if node.op_type == "LSTM":  # per channel: per (direction, gate row); per tensor: per direction
        axis = 1 if per_channel else 0
        return [WeightQuant(node.name, i, node.input[i], signed.name, "weight", axis, algo=algo) for i in (1, 2)]
    shape = tuple(idx.inits[node.input[1]].dims)
    axis = weight_axis(node, shape) if per_channel else None
    qtype = qp.UINT8 if node.op_type == "Conv" else signed
    return [WeightQuant(node.name, 1, node.input[1], qtype.name, "weight", axis, algo=algo)]


def _explain(plan: QuantPlan, config: QuantConfig, cpu: CpuInfo, reduce_range: bool, nodes: list) -> None:
    if config.int8.reduce_range is None:
        saturate = "may saturate" if reduce_range else "cannot saturate"
        why = f"auto: {cpu.describe()} {saturate} uint8 x int8 products with 8-bit weights"
    else:
        why = "--reduce-range" if config.int8.reduce_range else "--no-reduce-range"
    plan.decisions["reduce_range"] = {"value": reduce_range, "why": why, "cpu": cpu.to_dict()}
    plan.decisions["min_macs_per_conversion"] = {
        "value": MIN_MACS_PER_CONVERSION,
        "lstm": MIN_MACS_LSTM,
        "why": "dynamic: the fused integer MatMul broke even with float near 16 MACs per converted element "
        "(64 and 512 rows); DynamicQuantizeLSTM between 43 and 85",
    }
    plan.notes.append("activations are quantized at run time, per tensor, to uint8 (DynamicQuantizeLinear)")
    if reduce_range and any(w.qtype == qp.INT8_7BIT.name for w in plan.weights):
        plan.notes.append(f"MatMul/Gemm/LSTM weights use 7 bits (-63..63) ({why})")
    if not plan.weights:
        plan.warnings.append("nothing was quantized")  # inside If/Loop/Scan bodies: schemes/branches.py
