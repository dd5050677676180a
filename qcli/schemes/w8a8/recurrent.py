"""Recurrent layers in a W8A8 model. onnxruntime has one integer recurrent kernel on CPU, com.microsoft
DynamicQuantizeLSTM: int8 W and R, its input and hidden state quantized at run time, every step. An LSTM with
constant W and R (an Unsqueeze or Transpose of a constant folded first, passes/preprocess.py) runs on it where its
compute pays for those conversions (the dynamic scheme's rule and measured threshold, MIN_MACS_LSTM), written by
passes/dynamic.py beside the Q/DQ rewrite (passes/qdq.py hands it the LSTMs). It sits outside the int8 regions:
its input is float (a region before it ends in a DequantizeLinear) and so is its output. GRU and RNN have no
integer kernel: float, with that reason. A node pinned float (the accuracy guard, --exclude) stays float."""

from __future__ import annotations

from onnx import ModelProto

from qcli.core.config import QuantConfig
from qcli.core.graph import GraphIndex
from qcli.core.plan import Action, NodeDecision, Reason, WeightQuant, Why, reason
from qcli.schemes.dynamic.planner import MIN_MACS_LSTM, macs_per_conversion, weight_problem, weight_quants

RECURRENT = {"LSTM", "GRU", "RNN"}


def decide(
    model: ModelProto,
    config: QuantConfig,
    idx: GraphIndex,
    floats: set[str],
    reduce_range: bool,
    pinned: dict[str, Reason],
) -> dict[str, tuple[NodeDecision, list[WeightQuant]]]:
    """Each recurrent node's decision, and the weights it quantizes (none where it stays float)."""
    out: dict[str, tuple[NodeDecision, list[WeightQuant]]] = {}
    for node in model.graph.node:
        if node.op_type not in RECURRENT or node.domain not in ("", "ai.onnx"):
            continue
        why = pinned.get(node.name) or weight_problem(node, idx, floats, config)
        if not why:
            ratio = macs_per_conversion(node, idx)
            if ratio < MIN_MACS_LSTM and config.macs_threshold > 0:
                why = reason(Why.SPEED, macs_per_conversion=ratio, threshold=MIN_MACS_LSTM)
        if why:
            out[node.name] = (NodeDecision(node.name, node.op_type, Action.FLOAT, why), [])
        else:
            weights = weight_quants(node, idx, config, reduce_range, per_axis=True)
            out[node.name] = (NodeDecision(node.name, node.op_type, Action.INT8_OUT_FLOAT), weights)
    return out


def notes(decided: dict[str, tuple[NodeDecision, list[WeightQuant]]]) -> list[str]:
    on = [name for name, (d, _) in decided.items() if d.action == Action.INT8_OUT_FLOAT]
    if not on:
        return []
    return [
        f"LSTM {', '.join(on[:3])}{' ...' if len(on) > 3 else ''}: com.microsoft DynamicQuantizeLSTM (int8 W and R; "
        "its input and hidden state quantized at run time, every step; float in and out)"
    ]
