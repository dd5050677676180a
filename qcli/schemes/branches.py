"""Quantizing inside `If` branches and `Loop`/`Scan` bodies. Each branch or body that holds compute (a Conv, MatMul,
Gemm or recurrent layer, at any depth) is quantized as a model of its own (passes/branches.py: its own inputs and
outer tensors become inputs, outer constants copied in) by the same scheme handler, plan, steps and rewrite as the
main graph, on calibration samples made for it (body_feeds.py: the batches an If branch takes, a loop body's
inputs at its iterations). One that gets no samples is quantized as the scheme does without data
(`SchemeHandler.without_data`), with the reason; nested bodies are handled the same way inside the body's model.
The quantized body is spliced back into the written model, its Q/DQ inside the body that uses them (where
onnxruntime's fusions, which recurse into subgraphs, find them)."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from onnx import GraphProto, ModelProto, helper

from qcli.core.config import QuantConfig
from qcli.core.graph import name_nodes, subgraphs
from qcli.core.ops import ANCHORS
from qcli.core.plan import QuantPlan
from qcli.core.progress import Progress
from qcli.io import model_io
from qcli.io.feeds import FeedSource, input_specs
from qcli.passes.branches import BODIES, BRANCHES, Extracted, extract, hoist_shared, splice
from qcli.passes.preprocess import drop_unused_initializers, preprocess
from qcli.schemes import handler_for
from qcli.schemes.base import Data, SchemeHandler
from qcli.schemes.body_feeds import collect, safe, slug
from qcli.steps.base import Context, run

COMPUTE = ANCHORS | {"LSTM", "GRU", "RNN"}


@dataclass
class Branch:
    node: str  # the If, Loop or Scan node
    attr: str  # then_branch | else_branch | body
    graph: GraphProto | None  # the quantized branch; None: left as it was
    plan: QuantPlan | None = None
    why: str = ""  # how it was quantized, where not on its own calibration batches
    samples: int = 0
    op: str = "If"
    state: dict = field(default_factory=dict)  # what its rewrite needs beyond its plan (a saved plan's state)
    said: list[str] = field(default_factory=list)  # its steps' notes and warnings (and its own branches')

    @property
    def key(self) -> str:
        return f"{self.node}/{self.attr}"


@dataclass
class Branches:
    done: list[Branch] = field(default_factory=list)
    # per If node, its outputs' element types as the float model computed them: a quantized body is typed where
    # the original left its outputs untyped, and onnx's check then wants both branches to declare the type
    types: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # loop bodies whose inputs were not collected

    def plans(self) -> dict[str, QuantPlan]:
        return {b.key: b.plan for b in self.done if b.plan is not None}

    def state(self) -> dict:
        """For a saved plan: each branch's state, and the If outputs' types."""
        return {"branches": {b.key: b.state for b in self.done if b.plan is not None}, "types": self.types}

    def notes(self) -> list[str]:
        """What each branch's run found, prefixed with the branch, for the report."""
        out = []
        for b in self.done:
            what = "If branch" if b.op == "If" else f"{b.op} body"
            took = "calibration batch(es) that take it" if b.op == "If" else "iterations sampled from its runs"
            line = b.why or f"quantized on the {b.samples} {took}"
            if b.plan is not None and not b.plan.quantizes():
                line += " (nothing in it was quantized: it computes in float, its plan says why)"
            out.append(f"{what} {b.key}: {line}")
            out += [f"{what} {b.key}: {line}" for line in b.said]
        return out

    def splice_into(self, model: ModelProto) -> None:
        """Put the quantized branches into the written model (its If nodes keep their names)."""
        nodes = {n.name: n for n in model.graph.node if n.op_type in BODIES}
        extra: set[str] = set()
        for b in self.done:
            if b.graph is None or b.node not in nodes:
                continue
            attr = next(a for a in nodes[b.node].attribute if a.name == b.attr)
            attr.g.CopyFrom(b.graph)
            extra |= {n.domain for n in _all_nodes(b.graph) if n.domain not in ("", "ai.onnx")}
            for branch in (a.g for a in nodes[b.node].attribute if a.name in BRANCHES):
                for v, t in zip(branch.output, self.types.get(b.node, [])):
                    if not v.type.tensor_type.elem_type and t:
                        v.type.tensor_type.elem_type = t
        for name in {b.node for b in self.done if b.graph is not None and b.node in nodes}:
            hoist_shared(model, nodes[name], f"{safe(name)}/")
        drop_unused_initializers(model)  # outer weights only the float branches read
        have = {o.domain for o in model.opset_import}
        for domain in sorted(extra - have):
            model.opset_import.add(domain=domain, version=1)


@dataclass(frozen=True)
class Saved:
    """The branches of a saved plan, to replay: their plans, their states, the If outputs' types."""

    plans: dict[str, QuantPlan]
    state: dict


def has_compute(g: GraphProto) -> bool:
    return any(n.op_type in COMPUTE or any(has_compute(s) for s in subgraphs(n)) for n in g.node)


def quantize_branches(
    model: ModelProto,
    config: QuantConfig,
    handler: SchemeHandler,
    calib: FeedSource | None,
    items: list,
    progress: Progress,
    ort_config: dict | None = None,
    saved: Saved | None = None,
    dry_run: bool = False,
) -> Branches:
    """Every branch of `model`'s main-graph If nodes that holds compute, quantized (`model` is not changed);
    with `saved`, as the saved plan says, without data; under `dry_run` only named."""
    found = [
        (n, attr.name, attr.g)
        for n in model.graph.node
        if n.op_type in BODIES and n.domain in ("", "ai.onnx")
        for attr in n.attribute
        if attr.name in BODIES[n.op_type] and has_compute(attr.g)
    ]
    out = Branches()
    if not found or dry_run:
        why = "quantized as a model of its own when the model is written (--dry-run plans the main graph only)"
        out.done = [Branch(n.name, a, None, why=why, op=n.op_type) for n, a, _ in found]
        return out
    types = model_io.tensor_types(model)
    parts = {(n.name, a): extract(model, g, types) for n, a, g in found}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qcli-branch-")))
        counts, shapes = {}, {}
        if saved is None and calib is not None:
            counts, shapes = collect(model, found, parts, calib, items, tmp, progress, types, out)
            _ranks(parts, shapes)
        elif saved is not None:
            out.types = dict(saved.state.get("types", {}))
        for n, a, g in found:
            ex, count = parts[(n.name, a)], counts.get((n.name, a), 0)
            branch = Branch(n.name, a, None, samples=count, op=n.op_type)
            mine, tag, replayed = (config, handler), slug(n.name, a), None
            if saved is not None:
                if branch.key not in saved.plans:
                    continue
                replayed = (saved.plans[branch.key], saved.state.get("branches", {}).get(branch.key, {}))
                branch.why = "replayed from the saved plan"
            if (calib is not None and count == 0) or (replayed and replayed[0].scheme != config.scheme.value):
                fallback = handler.without_data(config)  # no data for it: what the scheme does without data
                mine = (fallback, handler_for(fallback.scheme))
                never = out.failed.get((n.name, a)) or ("never taken" if n.op_type == "If" else "never run")
                never += " on the calibration data" if (n.name, a) not in out.failed else ""
                branch.why = branch.why or f"{never}: quantized as {fallback.scheme.value}"
            elif calib is None and saved is None:
                branch.why = f"quantized without data ({config.scheme.value} needs none)"
            folder = tmp / tag if count else None
            qmodel, branch.plan, branch.state, branch.said = _quantize(
                ex, *mine, folder, progress, ort_config, tmp / f"{tag}-m", replayed
            )
            branch.graph = splice(g, qmodel, ex, f"{tag}/", model_io.tensor_types(qmodel))
            out.done.append(branch)
    return out


def _quantize(ex: Extracted, config, handler, folder: Path | None, progress, ort_config, work: Path, replayed=None):
    """The branch's model through the scheme: preprocess, its own branches, plan, steps, rewrite; or, with
    `replayed` (its saved plan and state), the saved plan applied. Returns the model, its plan, its state and
    what its steps said."""
    model, _ = preprocess(ex.model, config.fold_batchnorm, inplace=True)
    name_nodes(model.graph)  # the plan is keyed by node name (new names get the branch's prefix)
    work.mkdir()
    reference = model_io.save_for_session(model, work, "branch.onnx")
    src = FeedSource(folder, input_specs(model), model="branch") if folder else None
    if src is None:  # an accuracy target is measured on data: a branch without any is planned without it
        config = replace(config, min_sqnr=None, max_top1_drop=None)
    if replayed is not None:
        plan, state = replayed
        inner = quantize_branches(model, config, handler, None, [], progress, ort_config, Saved(plan.branches, state))
        planned = handler.replay(model, config, plan, state, Data(None, None))
        steps = handler.replay_steps(config, planned)
    else:
        items = list(src.items) if src else []
        inner = quantize_branches(model, config, handler, src, items, progress, ort_config)
        planned = handler.plan(model, config, Data(src, None), progress)
        steps = handler.steps(config, planned)
    ran = run(steps, planned.plan, Context(model, reference, planned.fid, progress, ort_config))
    plan = ran.plan
    plan.branches = inner.plans()
    state = handler.record(config, planned) | inner.state()
    written = handler.rewrite(model, plan, planned).model
    inner.splice_into(written)
    said = [line for part in ran.parts for line in (*part.warnings, *part.notes)] + inner.notes()
    return written, plan, state, said


def _ranks(parts: dict, shapes: dict[str, set]) -> None:
    """The inputs' ranks as seen, every dimension symbolic: onnxruntime optimizes a model of unknown rank less
    (a branch measured 1.11x FP32 at int8, 0.82x with ranks), and fixed dimensions let its constant folding
    fold shape arithmetic that feeds nested Ifs, which crashed onnxruntime 1.32 (an assertion, the process)."""
    for ex in parts.values():
        for v in ex.model.graph.input:
            ranks = {len(x) for x in shapes.get(ex.inputs[v.name], ())}
            if len(ranks) == 1:
                dims = [f"{v.name}_{i}" for i in range(ranks.pop())]
                v.CopyFrom(helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, dims))


def _all_nodes(g: GraphProto):
    for n in g.node:
        yield n
        for s in subgraphs(n):
            yield from _all_nodes(s)
