"""Calibration statistics for the data-aware weight algorithms (gptq, awq, the activation-weighted clipping
search): one onnxruntime session over the float model outputs the input activation of every planned MatMul /
Gemm; each batch is folded into H = X^T X (float64, [K, K], X: the activation with every leading axis
flattened into rows) and the mean |x| per input channel, then dropped.

Memory: one batch's activations at a time, plus 8 K^2 bytes per distinct activation (weights reading the same
one, like attention's Q, K and V, share its statistics). MiniLM-L6 (K = 384 and 1536): 18 MB for each of its six
FFN inputs, about 135 MB in all; a 7B LLaMA (K = 11008 for each of 32 down projections) would need about 31 GB
for those alone, too much for one pass: such models need statistics gathered a few layers at a time.

The statistics come from the float model in one pass: each layer's H is that of its float input, not of the
input the already-quantized earlier layers produce (the paper quantizes layer by layer, re-running each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from onnx import ModelProto

from qcli.calibration.calibrate import observing
from qcli.core.errors import InputError, NonFiniteValues
from qcli.core.graph import GraphIndex
from qcli.core.plan import QuantPlan
from qcli.weights import StatsAccumulator, WeightStats

WEIGHT_OPS = ("MatMul", "Gemm")


def inputs_of(model: ModelProto, plan: QuantPlan) -> dict[str, set[str]]:
    """Activation -> the planned MatMul/Gemm weights that read it (input 0 of the op)."""
    nodes = {n.name: n for n in model.graph.node}
    out: dict[str, set[str]] = {}
    for w in plan.weights:
        node = nodes.get(w.node)
        if node is not None and node.op_type in WEIGHT_OPS and w.input_index == 1:
            out.setdefault(node.input[0], set()).add(w.tensor)
    return out


def collect(
    model: ModelProto,
    plan: QuantPlan,
    batches: Iterable[dict[str, np.ndarray]],
    on_batch: Callable[[], None] | None = None,
) -> dict[str, WeightStats]:
    """Weight initializer name -> statistics of its input over every batch. A weight read by several MatMuls
    gets the sum of their inputs' statistics (its output errors add up)."""
    readers = inputs_of(model, plan)
    if not readers:
        return {}
    acc = {a: StatsAccumulator() for a in readers}
    idx = GraphIndex(model.graph)
    fed = {a for a in acc if a in idx.graph_inputs}
    consts = {a for a in acc if idx.is_const(a)}
    produced = [a for a in acc if a not in fed and a not in consts]
    for a in consts:  # a constant input is one value whatever the batch
        acc[a].update(idx.const(a))
    with observing(model, produced, "weight statistics") as sess:
        count = 0
        for feed in batches:
            values = sess.run(produced, feed) if produced else []
            for name, x in [*((a, feed[a]) for a in fed), *zip(produced, values)]:  # inputs first: the cause
                try:
                    acc[name].update(x)
                except NonFiniteValues as e:
                    raise InputError(f"calibration batch {count + 1}: tensor {name!r} {e}") from None
            del values
            count += 1
            if on_batch:
                on_batch()
    if count == 0 and len(consts) < len(acc):
        raise InputError("no calibration batches were read: gptq and awq need --calib data")
    per_input = {a: obs.value() for a, obs in acc.items()}
    out: dict[str, WeightStats] = {}
    for a, weights in readers.items():
        for w in sorted(weights):
            out[w] = out[w] + per_input[a] if w in out else per_input[a]
    return out
