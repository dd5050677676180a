"""AWQ's graph step: per activation read by MatMul/Gemm weights planned with algo "awq", search alpha
(weights/awq.py, on the calibration statistics) and move the chosen per-input-channel s into the graph: the
readers' weights times s along K, 1/s into the activation's producer where that is exact (LayerNormalization
scale and bias, a preceding MatMul's or Gemm's output columns and bias), else an inserted Mul. The folding is
SmoothQuant's (passes/smooth.py), so the float model computes the same outputs up to float32 rounding.

Activations are visited from the last to the first: when a producer MatMul absorbs 1/s, its own search (it
reads an earlier activation) then sees the weights it will be quantized with.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from onnx import ModelProto

from qcli.core.graph import GraphIndex
from qcli.core.plan import QuantPlan
from qcli.core.qparams import QTYPES
from qcli.passes.smooth import Editor, migrate, place_muls, targets
from qcli.passes.weight_only import key_of, rows_of
from qcli.weights import WeightStats
from qcli.weights.awq import GRID, Reader, output_error, search


@dataclass(frozen=True)
class AwqLayer:
    tensor: str  # the activation whose channels were scaled
    readers: tuple[str, ...]  # planned MatMul/Gemm nodes whose weights were searched
    alpha: float  # 0: left as it was (rtn was best)
    folded_into: str  # the producer that absorbed 1/s, "Mul" (node mul_node inserted), or "" (alpha 0)
    rtn_error: float  # relative output error sum tr(E H E^T) / sum tr(W H W^T) with plain rtn
    awq_error: float  # the same with the chosen s
    mul_node: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["readers"] = list(self.readers)
        return d


@dataclass(frozen=True)
class AwqResult:
    stats: dict[str, WeightStats]  # weight -> statistics of its input as the graph now computes it
    layers: tuple[AwqLayer, ...]
    notes: tuple[str, ...]
    scales: dict = field(default_factory=dict)  # activation -> the per-channel s moved into the graph


def awq_prepare(
    model: ModelProto,
    plan: QuantPlan,
    stats: dict[str, WeightStats],
    grid: int = GRID,
    chosen: dict[str, np.ndarray] | None = None,
) -> AwqResult:
    """Scale the inputs of the weights planned with algo "awq"; edits `model` and `plan` (a weight copied where
    it was shared) in place. `stats`: schemes/weight_only/stats.collect on the float model. Pass the returned
    stats on to quantize_plan and weight_errors. `chosen` (a saved plan's `AwqResult.scales`): the same edits
    without statistics or search."""
    g = model.graph
    planned = {w.node: w for w in plan.weights if w.algo == "awq" and w.role == "weight"}
    groups = targets(g, GraphIndex(g))
    order = {n.name: i for i, n in enumerate(g.node)}
    ed = Editor(model)
    out = dict(stats)
    layers, shared, muls, scales = [], [], [], {}
    for t, readers in sorted(groups.items(), key=lambda kv: -min(order[r.name] for r in kv[1])):
        mine = [r for r in readers if r.name in planned and r.input[1] in stats]
        if (chosen is None and not mine) or (chosen is not None and t not in chosen):
            continue
        uses = Counter(i for n in g.node for i in n.input)
        if any(uses[r.input[1]] != 1 or r.input[1] in ed.pinned for r in readers):
            shared.append(t)  # W diag(s) would change the other readers of a shared weight
            continue
        if chosen is not None:
            where, mul = migrate(ed, t, readers, chosen[t])
            muls += [mul] if mul is not None else []
            scales[t] = chosen[t]
            continue
        st = stats[mine[0].input[1]]
        idx = GraphIndex(g)
        found = []
        for r in mine:
            w = planned[r.name]
            found.append(Reader(rows_of(idx, key_of(r, w)), QTYPES[w.qtype], w.symmetric, int(w.block_size)))
        choice = search(found, st, grid)
        signal = sum(output_error(f.rows, np.zeros_like(f.rows, np.float64), st.h) for f in found) or 1.0
        names = tuple(r.name for r in mine)
        if choice.alpha == 0:
            layers.append(AwqLayer(t, names, 0.0, "", choice.rtn_error / signal, choice.error / signal))
            continue
        where, mul = migrate(ed, t, readers, choice.s)
        muls += [mul] if mul is not None else []
        scales[t] = choice.s
        scaled = st.scaled(choice.s)
        out.update({r.input[1]: scaled for r in readers if r.input[1] in stats})
        mul_name = mul.name if mul is not None else ""
        err, rtn_err = choice.error / signal, choice.rtn_error / signal
        layers.append(AwqLayer(t, names, choice.alpha, where, rtn_err, err, mul_name))
    place_muls(g, muls)  # at the end: it rebuilds the node list, which would orphan the nodes held in `groups`
    _resync(model, plan, out)
    return AwqResult(out, tuple(layers), tuple(_notes(layers, shared)), scales)


def _resync(model: ModelProto, plan: QuantPlan, stats: dict[str, WeightStats]) -> None:
    """A producer weight that was shared was copied before absorbing 1/s: the plan and stats follow the copy."""
    nodes = {n.name: n for n in model.graph.node}
    for i, w in enumerate(plan.weights):
        node = nodes.get(w.node)
        if node is not None and node.input[w.input_index] != w.tensor:
            now = node.input[w.input_index]
            plan.weights[i] = replace(w, tensor=now)
            if w.tensor in stats:
                stats[now] = stats[w.tensor]


def _notes(layers: list[AwqLayer], shared: list[str]) -> list[str]:
    moved = [x for x in layers if x.alpha > 0]
    out = []
    if layers:
        folded = sum(x.folded_into not in ("", "Mul") for x in moved)
        rtn = float(np.mean([x.rtn_error for x in layers]))
        awq = float(np.mean([x.awq_error for x in layers]))
        out.append(
            f"awq: {len(moved)} of {len(layers)} activation(s) scaled ({folded} folded into their producer, "
            f"{len(moved) - folded} through an inserted Mul); mean relative output error {rtn:.3g} (rtn) -> {awq:.3g}"
        )
    if shared:
        out.append(
            f"awq: {len(shared)} activation(s) left unscaled, a weight reading them is shared ({', '.join(shared[:3])})"
        )
    return out
