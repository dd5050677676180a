"""The scheme handler contract, and the data split every scheme shares.

A handler is everything one scheme means: its default output suffix, the opset its operators need, how it
plans (from the float model and the data), its after-plan steps in order, how it rewrites the graph, and what
it has to say about options and results. The pipeline asks the registry (schemes/__init__.py) for the handler
of `config.scheme` and never branches on the scheme itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from onnx import ModelProto

from qcli.core.config import QuantConfig, Scheme
from qcli.core.plan import QuantPlan
from qcli.core.progress import Progress
from qcli.io.feeds import FeedSource, FidelityData
from qcli.steps.base import Part, Step


@dataclass(frozen=True)
class Data:
    """The data the user gave: calibration and evaluation folders (either may be missing)."""

    calib: FeedSource | None
    eval: FeedSource | None


@dataclass(frozen=True)
class Planned:
    """A scheme's first plan, its calibration record and where fidelity is measured. Handlers subclass it
    with what their steps and rewrite need (a replanner, statistics, quantized weights)."""

    plan: QuantPlan
    calibration: dict | None
    fid: FidelityData


@dataclass(frozen=True)
class Written:
    """The rewritten model, the quantized tensors' names (float tensor -> its QuantizeLinear output) where the
    per-layer diagnosis can read them, and the rewrite's part of the report."""

    model: ModelProto
    qnames: dict[str, str] = field(default_factory=dict)
    part: Part = Part()


@dataclass(frozen=True)
class Inspected:
    """What `qcli inspect` shows of a scheme's plan before any data."""

    candidates: list[dict]
    float_nodes: list[dict]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class SchemeHandler(ABC):
    scheme: Scheme
    suffix: str  # default output: <model><suffix>
    candidates_label: str  # how `qcli inspect` names what would be quantized

    @abstractmethod
    def opset(self, config: QuantConfig) -> tuple[int, str] | None:
        """The opset the written operators need, and why; None where no standard opset is needed."""

    @abstractmethod
    def plan(self, model: ModelProto, config: QuantConfig, data: Data, progress: Progress) -> Planned: ...

    @abstractmethod
    def steps(self, config: QuantConfig, planned: Planned) -> list[Step]:
        """The after-plan steps, in order: the whole recipe of the scheme at a glance."""

    @abstractmethod
    def rewrite(self, model: ModelProto, plan: QuantPlan, planned: Planned) -> Written:
        """The quantized model (`model`, the float graph, may be consumed: nothing reads it after)."""

    @abstractmethod
    def inspect(self, model: ModelProto, config: QuantConfig) -> Inspected: ...

    @abstractmethod
    def summary(self, config: dict, decisions: dict) -> str:
        """One line for the report: the scheme as applied (`config`: the effective configuration)."""

    def without_data(self, config: QuantConfig) -> QuantConfig:
        """The configuration that quantizes a graph this run has no data for (an If branch the calibration data
        never takes): this scheme's own where it needs none."""
        return config

    def record(self, config: QuantConfig, planned: Planned) -> dict:
        """What the rewrite needs beyond the final plan that was derived from data (JSON-ready): a saved plan's
        `state` (io/planfile.py). Called after the steps ran."""
        return {}

    def replay(self, model: ModelProto, config: QuantConfig, plan: QuantPlan, state: dict, data: Data) -> Planned:
        """A saved plan made ready to rewrite `model` with no calibration and no timing: the edits its run made to
        the float model from data, redone from `state`. Fidelity is measured where a plain run would."""
        return Planned(plan, None, fidelity_only(data))

    def replay_steps(self, config: QuantConfig, planned: Planned) -> list[Step]:
        """The steps that carry out a replayed plan (none decides anything)."""
        return []

    def data_warnings(self, config: QuantConfig, data: Data) -> list[str]:
        """Data given that this scheme does not use as the user may think."""
        return []

    def measured_notes(self, plan: QuantPlan, latency_ratio: float | None, ort_config: dict | None) -> list[str]:
        """Notes on the written model's measured figures."""
        return []


def split(calib_src: FeedSource, eval_src: FeedSource | None) -> tuple[list, list]:
    """The calibration files to use, and those held aside to measure fidelity on unseen data: a fifth, when
    there is no --eval and there are at least 5."""
    items = list(calib_src.items)
    if eval_src is not None or len(items) < 5:
        return items, []
    cut = max(1, len(items) // 5)
    return items[:-cut], items[-cut:]


def fidelity_only(data: Data) -> FidelityData:
    """Where a scheme that fits nothing to data measures fidelity: --eval, else --calib, else nowhere."""
    src = data.eval or data.calib
    if src is None:
        return FidelityData(None, [], "")
    flag = "--eval" if data.eval else "--calib"
    return FidelityData(src, src.items, f"{flag} {src.folder} ({len(src.items)} batches)")


def fidelity_after_fit(data: Data, items: list, held: list) -> FidelityData:
    """Where a scheme that fitted something to `items` measures fidelity: --eval, else the held-aside files."""
    if data.eval:
        return fidelity_only(Data(None, data.eval))
    if held:
        return FidelityData(data.calib, held, f"{len(held)} calibration file(s) held aside")
    desc = f"the {len(items)} calibration file(s) themselves (fewer than 5: none held aside)"
    return FidelityData(data.calib, items, desc, in_sample=True)


def output_path(model: Path, suffix: str) -> Path:
    return model.with_name(model.stem + suffix)


def final_inspection(plan: QuantPlan) -> Inspected:
    """A plan made without data is final: what it quantizes, and what it keeps float and why."""
    candidates = [
        {"node": d.node, "op_type": d.op_type, "action": d.action.value}
        for d in plan.nodes
        if d.why is None and d.action.value != "float"
    ]
    return Inspected(candidates, [d.to_dict() for d in plan.nodes if d.reason], [], list(plan.warnings))
