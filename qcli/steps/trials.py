"""Candidate plans of one model, each written and measured against the float reference on the same batches:
what the accuracy target's search and the default accuracy guard both need.

`rank_units` orders the int8 layers by the noise each adds in the all-int8 model (measure/diagnose.py), once, so the
callers try returning layers to float in that order instead of evaluating every layer at every step.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto

from qcli.core.graph import GraphIndex
from qcli.core.plan import Action, QuantPlan
from qcli.io import model_io
from qcli.io.feeds import FidelityData
from qcli.measure import evaluate
from qcli.measure.diagnose import layer_errors, quantized_outputs
from qcli.measure.evaluate import OutputFidelity
from qcli.measure.layerwise import per_layer
from qcli.passes.unscale import apply_unscaled

RANK_BATCHES = 4  # batches used to rank the layers
INT8_ACTIONS = (Action.INT8, Action.INT8_OUT_FLOAT, Action.PASSTHROUGH)


Apply = Callable[[ModelProto, QuantPlan], ModelProto]


@dataclass(frozen=True)
class QdqWriter:
    """W8A8's rewrite as every candidate is written: Q/DQ (quantized tensors get new names, which `write` returns
    for the per-layer ranking), with the channel scaling the plan leaves idle taken back (passes/unscale.py)."""

    scaling: tuple = ()  # the model's channel-scaling edits (passes/unscale.ScalingEdit)

    def __call__(self, model: ModelProto, plan: QuantPlan) -> ModelProto:
        return self.write(model, plan)[0]

    def write(self, model: ModelProto, plan: QuantPlan) -> tuple[ModelProto, dict[str, str]]:
        return apply_unscaled(model, plan, self.scaling)


w8a8 = QdqWriter()


class Trials:
    """Writes candidate plans of `model` into one temporary folder and measures each against `reference`."""

    def __init__(
        self,
        model: ModelProto,
        reference: Path,
        data: FidelityData,
        tmp: Path,
        advance=lambda: None,
        apply=w8a8,
        units: tuple[Action, ...] = INT8_ACTIONS,
        cost: Callable[[str], float] | None = None,
    ):
        self.model, self.reference, self.data, self.tmp, self.advance = model, reference, data, tmp, advance
        self.apply, self.units, self.cost = apply, units, cost
        self.recordings: dict = {}  # the reference's outputs, where no share_reference_outputs scope holds them

    def write(self, plan: QuantPlan, name: str = "candidate.onnx") -> Path:
        """The plan's model on disk; not kept in memory (its sessions load it from the file)."""
        return model_io.save_for_session(self.apply(self.model, plan), self.tmp, name)

    def measure(self, plan: QuantPlan, name: str = "candidate.onnx") -> list[OutputFidelity]:
        """Fidelity of every output of the plan's model; one step of progress. The reference's outputs are
        recorded on the first call, so the float model is not loaded again for every candidate."""
        return self.measure_model(self.write(plan, name))

    def measure_model(self, model: Path | evaluate.Session) -> list[OutputFidelity]:
        """As measure(), for a candidate written already (its file, or a session open over it)."""
        recorded = _recording(self.reference, self.data, self.recordings)
        result = evaluate.fidelity(recorded, model, self.data.feeds(), candidate_ours=True)
        self.advance()
        return result

    def rank_units(self, plan: QuantPlan) -> list[list[str]]:
        """Int8 node groups, the one whose tensor gains the most noise first."""
        if not isinstance(self.apply, QdqWriter):
            return self._rank_by_name(plan)
        path, qnames = self._write_ranked(plan)  # only the float model stays in memory meanwhile
        int8 = {d.node for d in plan.nodes if d.action in INT8_ACTIONS}
        idx = GraphIndex(self.model.graph)
        feeds = (self.data.src.load(i) for i in self.data.items[:RANK_BATCHES])
        errors = sorted(layer_errors(self.model, path, plan, qnames, feeds), key=lambda e: -e.introduced)
        units, seen = [], set()
        for e in errors:
            # The noise a tensor gains is added by its producer (its weights, how it reads its quantized
            # inputs) and by its own quantization: the producer goes float first (a float reader then reads
            # the int8 producer's float output); a tensor with no int8 producer blames its int8 readers.
            nodes = [n for n in e.nodes if n in int8]
            nodes = nodes or [n.name for n in idx.consumers.get(e.tensor, []) if n.name in int8]
            nodes = [n for n in dict.fromkeys(nodes) if n not in seen]
            if nodes and e.introduced > 0:
                units.append(nodes)
                seen.update(nodes)
        return units + _rest(plan, seen)

    def _write_ranked(self, plan: QuantPlan) -> tuple[Path, dict[str, str]]:
        """The all-int8 model written with the outputs the per-layer comparison reads, and its quantized
        tensor names; the model itself is not kept."""
        qmodel, qnames = self.apply.write(self.model, plan)
        outputs = quantized_outputs(self.model, plan, qnames)
        return model_io.save_with_outputs(qmodel, outputs, self.tmp, "ranked.onnx"), qnames

    def _rank_by_name(self, plan: QuantPlan) -> list[list[str]]:
        """Schemes whose quantized ops keep their output names (dynamic, weight-only): each quantized op's output
        against the float model's tensor of the same name (measure/layerwise.py), the op adding the most noise first."""
        ref = model_io.save_for_session(self.model, self.tmp, "float.onnx")
        cand = self.write(plan, "ranked.onnx")
        items = self.data.items[:RANK_BATCHES]
        layers = per_layer(ref, cand, lambda: (self.data.src.load(i) for i in items))
        quantized = {d.node for d in plan.nodes if d.action in self.units}
        if self.cost is not None:  # the most noise per unit of cost first (weight-only: per weight element)
            layers = sorted(layers, key=lambda x: -x.introduced / max(self.cost(x.node) or 1.0, 1.0))
        units = [[x.node] for x in layers if x.node in quantized and x.introduced > 0]
        return units + _rest(plan, {u[0] for u in units}, self.units)


def _rest(plan: QuantPlan, seen: set[str], units: tuple[Action, ...] = INT8_ACTIONS) -> list[list[str]]:
    """Quantized compute whose added noise no measured tensor shows (a MatMul/Gemm writing float, a layer whose
    noise is within its input's): last, one by one, so the ranking can end at all-float."""
    compute = set(units) - {Action.PASSTHROUGH}  # an op that only moves int8 data adds no noise of its own
    return [[d.node] for d in plan.nodes if d.action in compute and d.node not in seen]


# The reference outputs recorded in this scope (share_reference_outputs), by reference file and data source.
_SHARED: ContextVar[dict | None] = ContextVar("qcli_reference_outputs", default=None)


@dataclass
class _Recording:
    recorded: evaluate.Recorded
    src: object  # the data source, alive while its id is part of the key
    items: set = field(default_factory=set)  # the batches recorded


@contextmanager
def share_reference_outputs() -> Iterator[None]:
    """Within: trials on the same reference file and data source share its recorded outputs, each batch run
    once (a quantize's steps: guard, placement, refit and bias correction measure on the same files)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _recording(reference: Path, data: FidelityData, own: dict) -> evaluate.Recorded:
    """The reference's outputs on data's batches: recorded now, or before in this share_reference_outputs
    scope (else in `own`); only the batches not recorded yet are run."""
    st = Path(reference).stat()
    key = (str(reference), st.st_mtime_ns, st.st_size, id(data.src))
    shared = _SHARED.get()
    store = shared if shared is not None else own
    held = store.get(key)
    if held is None:
        held = store[key] = _Recording(evaluate.Recorded(reference, data.feeds()), data.src, set(data.items))
    missing = [i for i in data.items if i not in held.items]
    if missing:
        held.recorded.add(FidelityData(data.src, missing, "").feeds())
        held.items.update(missing)
    return held.recorded


@contextmanager
def trials(
    model: ModelProto,
    reference: Path,
    data: FidelityData,
    advance: Callable[[], None],
    apply: Apply = w8a8,
    units: tuple[Action, ...] = INT8_ACTIONS,
    cost: Callable[[str], float] | None = None,
) -> Iterator[Trials]:
    with tempfile.TemporaryDirectory(prefix="qcli-trials-") as tmp:
        yield Trials(model, reference, data, Path(tmp), advance, apply, units, cost)


def worst_sqnr(fidelity: list[OutputFidelity]) -> float:
    return min(f.sqnr_db for f in fidelity)


def typical_sqnr(fidelity: list[OutputFidelity]) -> float:
    """Each batch's worst output SQNR, averaged over the batches in dB (the geometric mean of the ratios). A
    batch at another scale (a file left in 0..255 among files in 0..1) sets the pooled figure alone; here it
    counts as one batch, as much as each other (a batch ruined by clipping, as much as one made perfect)."""
    per_batch = [min(f.batch_db[i] for f in fidelity) for i in range(len(fidelity[0].batch_db))]
    finite = [min(x, 200.0) for x in per_batch]  # an exact batch (inf dB) counts as 200 dB
    return float(np.mean(finite)) if finite else worst_sqnr(fidelity)
