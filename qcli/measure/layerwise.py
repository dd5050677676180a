"""Per-layer comparison of any two versions of a model (`qcli compare --per-layer`): qcli's output, another
tool's, or a hand-edited one.

Tensors are matched by name: every float tensor a node of the reference writes that the candidate also
has as a float tensor (QDQ models keep the float names: a quantized producer still writes its float output
before its QuantizeLinear). Both models expose the matched tensors as extra outputs and run batch by batch;
each tensor's noise is accumulated on the fly, so memory is the two sessions and one batch of at most `chunk`
tensors per model, whatever the number of batches (more tensors than `chunk`: more passes over the data);
the models themselves are held as graphs without their weights.

A layer's *introduced* error is its relative noise power minus the largest of its matched inputs', so error
inherited from upstream is not blamed on it (layers.py: the same measure as quantize's per-layer report).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto

from qcli.core import qparams as qp
from qcli.core.ops import DATA_MOVEMENT
from qcli.io import model_io
from qcli.io.session import Session
from qcli.measure.layers import LayerError, introduced
from qcli.passes.qdq import QUANTIZED_TENSORS_KEY

CHUNK = 256  # tensors per pass


def _as_seen(model: ModelProto) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output its readers see, where the tensor only goes through Q -> DQ.
    Compared there, a layer's error includes its output's quantization and an activation folded into the Q
    (tools that drop a Relu give its name to the tensor before the clamp). qcli's own models say in their
    metadata which QuantizeLinear output holds each original tensor (its int8 producers write new names)."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    meta = next((p.value for p in model.metadata_props if p.key == QUANTIZED_TENSORS_KEY), None)
    for t, q in (json.loads(meta) if meta else {}).items():
        dq = [d for d in readers.get(q, []) if d.op_type == "DequantizeLinear"]
        if dq:
            out[t] = dq[0].output[0]
    for t, rs in readers.items():
        if len(rs) == 1 and rs[0].op_type == "QuantizeLinear" and rs[0].input[0] == t:
            dq = readers.get(rs[0].output[0], [])
            if dq and all(d.op_type == "DequantizeLinear" for d in dq):
                out[t] = dq[0].output[0]
    return out


def float_outputs(model: ModelProto) -> dict[str, str]:
    """Float tensors written by nodes of the main graph -> the writing node's name (or op type)."""
    floats = model_io.float_tensors(model)
    return {o: n.name or n.op_type for n in model.graph.node for o in n.output if o and o in floats}


def _candidate_floats(cand: ModelProto, ref_floats: dict[str, str]) -> set[str]:
    """The candidate's float tensors, and the tensors it writes that shape inference cannot type (after an op
    onnx does not know, such as MatMulNBits) under a name the reference writes as float."""
    types = model_io.tensor_types(cand)
    written = {o for n in cand.graph.node for o in n.output if o}
    return {o for o in written if types.get(o) == TensorProto.FLOAT or (o not in types and o in ref_floats)}


def _exposed(path: Path, outputs: dict[str, int], folder: Path, name: str) -> Path:
    """The model in `path` written to folder/name with these extra outputs (the loaded model is dropped on return)."""
    return model_io.save_with_outputs(model_io.load(path), outputs, folder, name)


def per_layer(
    ref_path: Path,
    cand_path: Path,
    batches: Callable[[], Iterable[dict[str, np.ndarray]]],
    chunk: int = CHUNK,
) -> list[LayerError]:
    """Rank the matched tensors by the error each one's layer introduces; `batches()` yields the same
    feeds on every call (one pass per chunk of tensors). Only the graphs stay in memory: each model is read
    whole just to write its copy with the chunk's tensors as outputs, one model at a time."""
    ref, cand = model_io.load(ref_path, weights=False), model_io.load(cand_path, weights=False)
    ref_out, cand_out = float_outputs(ref), _candidate_floats(cand, float_outputs(ref))
    seen = _as_seen(cand)
    graph_outputs = {o.name for o in ref.graph.output}
    matched = [t for t in ref_out if (t in cand_out or t in seen) and t not in graph_outputs]
    matched += [o.name for o in ref.graph.output if o.name in cand_out]
    rel: dict[str, float] = {}
    db: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qcli-layers-") as tmp:
        for start in range(0, len(matched), chunk):
            part = matched[start : start + chunk]
            cpart = [seen.get(t, t) for t in part]
            r_file = _exposed(ref_path, dict.fromkeys(part, TensorProto.FLOAT), Path(tmp), "ref.onnx")
            c_file = _exposed(cand_path, dict.fromkeys(cpart, TensorProto.FLOAT), Path(tmp), "cand.onnx")
            r = Session(r_file, label="the reference model")
            c = Session(c_file, label="the candidate model")
            meters = {t: qp.NoiseMeter() for t in part}
            for feed in batches():
                for t, a, b in zip(part, r.run(part, feed), c.run(cpart, feed)):
                    meters[t].add(a, b)
            r.close()
            c.close()
            rel |= {t: m.relative_noise for t, m in meters.items()}
            db |= {t: m.db for t, m in meters.items()}
    producer = {o: n for n in ref.graph.node for o in n.output}
    position = {o: i for i, n in enumerate(ref.graph.node) for o in n.output}
    out = []
    for t in (t for t in matched if producer[t].op_type not in DATA_MOVEMENT):  # blame compute layers only
        node, err = producer[t], introduced(rel, t, producer[t].input)
        out.append(LayerError(t, node.name or node.op_type, node.op_type, db[t], err, position=position[t]))
    return sorted(out, key=lambda x: (-x.introduced, x.sqnr_db))
