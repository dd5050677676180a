"""An accuracy target met automatically (`--min-sqnr`, `--max-top1-drop` on quantize): the fastest plan that
meets it, by returning the fewest layers to float.

The layers are ranked once, by the noise each adds at its output in the all-int8 model (diagnose.py, on the
fidelity data). A unit is the int8 producer of a tensor that gains noise (or, for a tensor no int8 op
writes, its int8 readers). The search returns the top k units to float, re-planning the Q/DQ
placement each time (so nothing is left stranded between conversions), with k doubling until the target is
met on the fidelity data (never the calibration files where others exist), then bisecting down to the fewest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnx import ModelProto

from . import evaluate, model_io
from .compare import FidelityData
from .diagnose import layer_errors
from .evaluate import OutputFidelity
from .graph import GraphIndex
from .passes.qdq import apply_w8a8
from .plan import Action, QuantPlan, Reason, Why, reason

RANK_BATCHES = 4  # fidelity batches used to rank the layers
LATENCY_RUNS = 10  # interleaved runs for the all-int8 model's latency, when layers had to go back
INT8_ACTIONS = (Action.INT8, Action.INT8_OUT_FLOAT, Action.PASSTHROUGH)


@dataclass(frozen=True)
class AccuracyTarget:
    min_sqnr: float | None = None  # dB, every output
    max_top1_drop: float | None = None  # percent of rows whose top-1 class changes, class-score outputs

    def __bool__(self) -> bool:
        return self.min_sqnr is not None or self.max_top1_drop is not None

    def shortfall(self, fidelity: list[OutputFidelity]) -> str | None:
        """None when met; else what is missing, for a person."""
        worst = min(fidelity, key=lambda f: f.sqnr_db)
        if self.min_sqnr is not None and worst.sqnr_db < self.min_sqnr:
            return f"output {worst.name} at {worst.sqnr_db:.2f} dB < --min-sqnr {self.min_sqnr:g}"
        agreements = [f for f in fidelity if f.top1_agreement is not None]
        if self.max_top1_drop is not None and agreements:
            f = min(agreements, key=lambda f: f.top1_agreement)
            drop = (1 - f.top1_agreement) * 100
            if drop > self.max_top1_drop:
                return f"output {f.name} top-1 changes on {drop:.2f}% of rows > --max-top1-drop {self.max_top1_drop:g}"
        return None


@dataclass
class Step:
    k: int  # units returned to float
    nodes: list[str]
    worst_sqnr_db: float
    met: bool

    def to_dict(self) -> dict:
        return {
            "units": self.k,
            "nodes_float": len(self.nodes),
            "worst_sqnr_db": round(self.worst_sqnr_db, 2),
            "met": self.met,
        }


@dataclass
class SearchResult:
    plan: QuantPlan
    met: bool
    returned: list[str] = field(default_factory=list)  # nodes returned to float, in rank order
    steps: list[Step] = field(default_factory=list)
    shortfall: str | None = None
    first_size: int = 0  # bytes of the all-int8 model, before any layer went back to float
    first_latency: float | None = None  # its latency ratio to FP32 (measured only when layers went back)

    def to_dict(self, target: AccuracyTarget) -> dict:
        return {
            "min_sqnr": target.min_sqnr,
            "max_top1_drop": target.max_top1_drop,
            "met": self.met,
            "shortfall": self.shortfall,
            "returned_to_float": self.returned,
            "steps": [s.to_dict() for s in self.steps],
            "all_int8_size_bytes": self.first_size,
            "all_int8_latency_ratio": self.first_latency,
        }


def _units(model: ModelProto, plan: QuantPlan, qmodel: ModelProto, qnames, fid: FidelityData) -> list[list[str]]:
    """Int8 node groups, the one whose tensor gains the most noise first."""
    int8 = {d.node for d in plan.nodes if d.action in INT8_ACTIONS}
    idx = GraphIndex(model.graph)
    feeds = (fid.src.load(i) for i in fid.items[:RANK_BATCHES])
    errors = sorted(layer_errors(model, qmodel, plan, qnames, feeds), key=lambda e: -e.introduced)
    units, seen = [], set()
    for e in errors:
        # The noise a tensor gains is added by its producer (its weights, how it reads its quantized inputs)
        # and by its own quantization: the producer goes float first (a float reader then reads the int8
        # producer's float output); a tensor with no int8 producer blames its int8 readers.
        nodes = [n for n in e.nodes if n in int8] or [n.name for n in idx.consumers.get(e.tensor, []) if n.name in int8]
        nodes = [n for n in dict.fromkeys(nodes) if n not in seen]
        if nodes and e.introduced > 0:
            units.append(nodes)
            seen.update(nodes)
    # Int8 compute whose added noise no quantized tensor shows (a MatMul/Gemm writing float, a layer whose
    # noise is within its input's): last, one by one, so the ranking can end at all-float.
    compute = (Action.INT8, Action.INT8_OUT_FLOAT)
    units += [[d.node] for d in plan.nodes if d.action in compute and d.node not in seen]
    return units


def search(
    model: ModelProto,
    reference: Path,
    first: QuantPlan,
    replan: Callable[[dict[str, Reason]], QuantPlan],
    target: AccuracyTarget,
    fid: FidelityData,
    advance: Callable[[], None] = lambda: None,
) -> SearchResult:
    """Each fidelity measurement calls advance() (a step of the search)."""
    with tempfile.TemporaryDirectory(prefix="qcli-target-") as tmp:

        def measure(plan: QuantPlan, name: str = "candidate.onnx") -> list[OutputFidelity]:
            qmodel, _ = apply_w8a8(model, plan)
            path = model_io.save_for_session(qmodel, Path(tmp), name)
            result = evaluate.fidelity(reference, path, fid.feeds(), candidate_ours=True)
            advance()
            return result

        fidelity = measure(first, "all-int8.onnx")
        all_int8 = Path(tmp) / "all-int8.onnx"
        size = evaluate.file_size(all_int8)
        missing = target.shortfall(fidelity)
        if missing is None:
            return SearchResult(first, True, steps=[Step(0, [], _worst(fidelity), True)], first_size=size)
        first_feed = fid.src.load(fid.items[0])
        lat = evaluate.latency(reference, all_int8, first_feed, runs=LATENCY_RUNS, candidate_ours=True).ratio
        qmodel, qnames = apply_w8a8(model, first)
        units = _units(model, first, qmodel, qnames, fid)
        steps = [Step(0, [], _worst(fidelity), False)]
        tried: dict[int, tuple[QuantPlan, str | None, float]] = {0: (first, missing, _worst(fidelity))}

        def attempt(k: int) -> bool:
            nodes = [n for u in units[:k] for n in u]
            why = {n: reason(Why.TARGET, rank=i + 1) for i, n in enumerate(nodes)}
            plan = replan(why)
            fid_k = measure(plan)
            short = target.shortfall(fid_k)
            tried[k] = (plan, short, _worst(fid_k))
            steps.append(Step(k, nodes, _worst(fid_k), short is None))
            return short is None

        lo, hi, k = 0, None, 1
        while k <= len(units):
            if attempt(k):
                hi = k
                break
            lo, k = k, k * 2
        if hi is None and lo < len(units) and attempt(len(units)):
            hi = len(units)
        if hi is None:  # the ranking is exhausted: the most accurate plan tried
            best = max(tried, key=lambda j: tried[j][2])
            plan, short, _ = tried[best]
            returned = [n for u in units[:best] for n in u]
            return SearchResult(plan, False, returned, steps, short, size, lat)
        while hi - lo > 1:  # fewest units that meet the target
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if attempt(mid) else (mid, hi)
        return SearchResult(tried[hi][0], True, [n for u in units[:hi] for n in u], steps, None, size, lat)


def _worst(fidelity: list[OutputFidelity]) -> float:
    return min(f.sqnr_db for f in fidelity)
