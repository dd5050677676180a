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
from .session import Session


@dataclass(frozen=True)
class LayerError:
    tensor: str
    node: str
    op_type: str
    sqnr_db: float
    introduced: float  # relative noise power added by this layer (0: none; 0.01 is -20 dB)
    nodes: tuple[str, ...] = ()  # the producer and the ops folded into its QuantizeLinear


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
        ref_types = dict.fromkeys(tensors, TensorProto.FLOAT)
        ref = Session(model_io.save_with_outputs(reference, ref_types, Path(tmp), "ref.onnx"), label="the model")
        cand_types = {qnames[t]: qp.QTYPES[plan.activations[t].qtype].onnx_type for t in tensors}
        cand_path = model_io.save_with_outputs(quantized, cand_types, Path(tmp), "cand.onnx")
        cand = Session(cand_path, ours=True, label="the quantized model (per-layer run)")
        meters = {t: qp.NoiseMeter() for t in tensors}
        for feed in feeds:
            r_out = ref.run(tensors, feed)
            c_out = cand.run([qnames[t] for t in tensors], feed)
            for t, r, q in zip(tensors, r_out, c_out):
                a = plan.activations[t]
                meters[t].add(r, (q.astype(np.float64) - a.zero_point) * a.scale)
    rel = {t: m.relative_noise for t, m in meters.items()}
    producer = {o: n for n in reference.graph.node for o in n.output}
    folded = {d.node for d in plan.nodes if d.action == Action.FOLDED}
    idx = GraphIndex(reference.graph)
    out = []
    for t in tensors:
        chain = fold.chain(producer[t], lambda n: n.name in folded, idx)  # ops folded into a producer's Q
        node = idx.producer[fold.data_input(chain[0], idx)] if chain else producer[t]
        name = "+".join(n.name for n in [node, *chain])
        op = "+".join(n.op_type for n in [node, *chain])
        upstream = max((rel[i] for i in node.input if i in rel), default=0.0)
        nodes = tuple(n.name for n in [node, *chain])
        out.append(LayerError(t, name, op, meters[t].db, max(rel[t] - upstream, 0.0), nodes))
    return out
