"""Which layers cost accuracy: each quantized activation against the float model's, on the same inputs.

The float model exposes tensor T; the quantized model exposes T's QuantizeLinear output, dequantized here
with the plan's scale and zero point. A layer's *introduced* error is how much its relative noise power
exceeds that of its noisiest quantized input, so error inherited from upstream is not blamed on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto

from . import fold, model_io
from . import qparams as qp
from .graph import GraphIndex
from .plan import Action, QuantPlan
from .session import make_session

_ONNX_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}


@dataclass(frozen=True)
class LayerError:
    tensor: str
    node: str
    op_type: str
    sqnr_db: float
    introduced: float  # relative noise power added by this layer (0: none; 0.01 is -20 dB)


def layer_errors(
    reference: ModelProto,
    quantized: ModelProto,
    plan: QuantPlan,
    qnames: dict[str, str],
    feeds: Iterable[dict[str, np.ndarray]],
) -> list[LayerError]:
    tensors = [t for t in qnames if t in plan.activations and t in {o for n in reference.graph.node for o in n.output}]
    if not tensors:
        return []
    with tempfile.TemporaryDirectory(prefix="qcli-diag-") as tmp:
        ref = make_session(
            model_io.save_with_outputs(reference, dict.fromkeys(tensors, TensorProto.FLOAT), Path(tmp), "ref.onnx")
        )
        cand = make_session(
            model_io.save_with_outputs(
                quantized, {qnames[t]: _ONNX_TYPES[plan.activations[t].qtype] for t in tensors}, Path(tmp), "cand.onnx"
            )
        )
        sig = dict.fromkeys(tensors, 0.0)
        noise = dict.fromkeys(tensors, 0.0)
        for feed in feeds:
            r_out = ref.run(tensors, feed)
            c_out = cand.run([qnames[t] for t in tensors], feed)
            for t, r, q in zip(tensors, r_out, c_out):
                a = plan.activations[t]
                c = (q.astype(np.float64) - a.zero_point) * a.scale
                sig[t] += float(np.sum(r.astype(np.float64) ** 2))
                noise[t] += float(np.sum((r - c) ** 2))
    rel = {t: noise[t] / sig[t] if sig[t] else 0.0 for t in tensors}
    producer = {o: n for n in reference.graph.node for o in n.output}
    folded = {d.node for d in plan.nodes if d.action == Action.FOLDED}
    idx = GraphIndex(reference.graph)
    out = []
    for t in tensors:
        node, name, op = producer[t], producer[t].name, producer[t].op_type
        while node.name in folded:  # ops folded into their producer's Q: blame the producer
            node = producer[fold.data_input(node, idx)]
            name, op = f"{node.name}+{name}", f"{node.op_type}+{op}"
        upstream = max((rel[i] for i in node.input if i in rel), default=0.0)
        sq = qp.db(sig[t], noise[t])
        out.append(LayerError(t, name, op, sq, max(rel[t] - upstream, 0.0)))
    return out
