"""Which layers cost accuracy: each quantized activation against the float model's, on the same inputs.

The float model exposes tensor T; the quantized model exposes T's QuantizeLinear output, dequantized here
with the plan's scale and zero point. A layer's *introduced* error is how much its relative noise power
exceeds that of its noisiest quantized input (layers.py), so error inherited from upstream is not blamed on it.

Memory: the two models never hold a session at the same time. The quantized model runs first and its int8
activations are kept (a quarter of their float size); its session is closed, then the float model runs and
each of its tensors is compared and dropped. When the int8 activations of all batches exceed RECORD_BYTES (or
the quantized model's own size, which a second session would have cost), they are taken in several passes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto

from qcli.core import fold
from qcli.core import qparams as qp
from qcli.core.graph import GraphIndex
from qcli.core.plan import Action, QuantPlan
from qcli.io import model_io
from qcli.io.session import Session
from qcli.io.structure import read_structure
from qcli.measure.evaluate import file_size
from qcli.measure.layers import LayerError, introduced

RECORD_BYTES = 128 << 20  # int8 activations kept at once, at least


def compared(reference: ModelProto, plan: QuantPlan, qnames: dict[str, str]) -> list[str]:
    """The float tensors compared: quantized activations that a node of the reference writes."""
    written = {o for n in reference.graph.node for o in n.output}
    return [t for t in qnames if t in plan.activations and t in written]


def quantized_outputs(reference: ModelProto, plan: QuantPlan, qnames: dict[str, str]) -> dict[str, int]:
    """The outputs the quantized model needs for the comparison: each compared tensor's QuantizeLinear output."""
    return {qnames[t]: qp.QTYPES[plan.activations[t].qtype].onnx_type for t in compared(reference, plan, qnames)}


def layer_errors(
    reference: ModelProto,
    quantized: ModelProto | Path,
    plan: QuantPlan,
    qnames: dict[str, str],
    feeds: Iterable[dict[str, np.ndarray]],
) -> list[LayerError]:
    """`quantized`: the model, or its file (written again with the compared outputs unless it has them:
    a caller that drops the model after writing it keeps it out of memory while the sessions run)."""
    tensors = compared(reference, plan, qnames)
    if not tensors:
        return []
    feeds = list(feeds)
    with tempfile.TemporaryDirectory(prefix="qcli-diag-") as tmp:
        cand_path = _with_outputs(quantized, quantized_outputs(reference, plan, qnames), Path(tmp))
        floats = dict.fromkeys(tensors, TensorProto.FLOAT)
        ref_path = model_io.save_with_outputs(reference, floats, Path(tmp), "ref.onnx")
        meters = {t: qp.NoiseMeter() for t in tensors}
        budget = max(RECORD_BYTES, file_size(cand_path))
        for part, recorded in _recorded(cand_path, tensors, qnames, feeds, budget):
            with Session(ref_path, label="the model") as ref:
                for k, feed in enumerate(feeds):
                    for t, r, q in zip(part, ref.run(part, feed), recorded[k]):
                        a = plan.activations[t]
                        meters[t].add(r, (q.astype(np.float64) - a.zero_point) * a.scale)
                    recorded[k] = None  # this batch's int8 values are done
    return _blame(reference, plan, tensors, meters)


def _with_outputs(quantized: ModelProto | Path, outputs: dict[str, int], folder: Path) -> Path:
    if isinstance(quantized, ModelProto):
        return model_io.save_with_outputs(quantized, outputs, folder, "cand.onnx")
    if set(outputs) <= {o.name for o in read_structure(quantized).graph.output}:
        return Path(quantized)
    return model_io.save_with_outputs(model_io.load(quantized), outputs, folder, "cand.onnx")


def _recorded(cand_path: Path, tensors: list[str], qnames: dict[str, str], feeds: list, budget: int):
    """(tensors, their int8 values per batch) in passes of at most `budget` bytes (at least one tensor each),
    each pass from a session of the quantized model that is closed before the pass is yielded. Sizes come from
    the first batch."""
    pending, sizes = list(tensors), None
    while pending:
        with Session(cand_path, ours=True, label="the quantized model (per-layer run)") as cand:
            first = None
            if sizes is None:
                first = dict(zip(pending, cand.run([qnames[t] for t in pending], feeds[0])))
                sizes = {t: v.nbytes * len(feeds) for t, v in first.items()}
            part, total = [], 0
            for t in pending:
                if part and total + sizes[t] > budget:
                    break
                part.append(t)
                total += sizes[t]
            recorded = [[first[t] for t in part]] if first is not None else []
            del first
            recorded += [cand.run([qnames[t] for t in part], f) for f in feeds[len(recorded) :]]
        pending = pending[len(part) :]
        yield part, recorded


def _blame(reference: ModelProto, plan: QuantPlan, tensors: list[str], meters: dict) -> list[LayerError]:
    rel = {t: m.relative_noise for t, m in meters.items()}
    producer = {o: n for n in reference.graph.node for o in n.output}
    folded = {d.node for d in plan.nodes if d.action == Action.FOLDED}
    idx = GraphIndex(reference.graph)
    position = {o: i for i, n in enumerate(reference.graph.node) for o in n.output}
    out = []
    for t in tensors:
        chain = fold.chain(producer[t], lambda n: n.name in folded, idx)  # ops folded into a producer's Q
        node = idx.producer[fold.data_input(chain[0], idx)] if chain else producer[t]
        name = "+".join(n.name for n in [node, *chain])
        op = "+".join(n.op_type for n in [node, *chain])
        nodes = tuple(n.name for n in [node, *chain])
        out.append(LayerError(t, name, op, meters[t].db, introduced(rel, t, node.input), nodes, position[t]))
    return out
