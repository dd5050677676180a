"""quantize(): load -> preprocess -> plan -> after-plan steps -> report -> rewrite -> save -> measure.

What differs by scheme (how it plans, its steps, its rewrite, its opset) is its handler's (schemes/); this
module runs the same phases for every scheme and never branches on one."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from qcli.compare import compare, measure
from qcli.core import codec, hostcpu
from qcli.core.config import QuantConfig, Scheme, unmatched_excludes
from qcli.core.errors import GateFailed, InputError, Interrupted
from qcli.core.graph import name_nodes
from qcli.core.ops import DATA_MOVEMENT, already_quantized
from qcli.core.plan import QuantPlan
from qcli.core.progress import Progress, no_progress
from qcli.io import model_io, planfile
from qcli.io.feeds import FidelityData, conversion_notes, input_specs, source_warnings
from qcli.io.fingerprint import fingerprint
from qcli.io.outpaths import check_outputs
from qcli.io.recipes import data_recipe, open_source
from qcli.io.session import release_memory
from qcli.io.validity import check_output
from qcli.measure.diagnose import layer_errors
from qcli.measure.evaluate import file_size
from qcli.measure.layers import PER_LAYER_NOTE
from qcli.passes.preprocess import preprocess, upgrade_opset
from qcli.report.assemble import add, describe
from qcli.report.provenance import provenance
from qcli.report.render import write_beside
from qcli.report.report import Report
from qcli.report.verdict import Status, verdict
from qcli.schemes import handler_for, replay
from qcli.schemes.base import Data, Planned, SchemeHandler, output_path
from qcli.schemes.branches import Saved, quantize_branches
from qcli.steps.base import Context, Ran, run
from qcli.steps.target import AccuracyTarget

LAYER_BATCHES = 4  # evaluation batches used for the per-layer error table
REPORTS_BYTES = 4_000_000  # room for the reports beside the model (YOLOv8n-shaped, 64 convs: 0.6 MB)


@dataclass
class QuantizeResult:
    plan: QuantPlan
    report: Report
    output: Path | None
    written: list[Path] = field(default_factory=list)  # the model and its report files


def default_output(model: Path, scheme: Scheme) -> Path:
    return output_path(model, handler_for(scheme).suffix)


def quantize(
    model_path: Path,
    config: QuantConfig,
    calib: Path | None = None,
    out: Path | None = None,
    eval_dir: Path | None = None,
    dry_run: bool = False,
    progress: Progress = no_progress,
    latency_runs: int = 30,
    ort_config: dict[str, str] | None = None,
    write_report: bool = True,
    command: str | None = None,
    strict: bool = False,
    recipe: Path | None = None,
    skip_bad_files: bool = False,
    html: bool = True,
    allow_quantized: bool = False,
    plan: Path | None = None,
    save_plan: Path | None = None,
) -> QuantizeResult:
    """Quantize `model_path` into `out` and measure it; writes OUT, OUT.report.json, OUT.report.md and
    OUT.report.html (unless dry_run; write_report=False skips the report files, html=False the page). The
    report's status is the verdict on the model written (report/verdict.py); `strict` makes a low-fidelity or
    not-quantized verdict a failed gate. `save_plan` also writes the run's plan to that file; `plan` replays a
    saved one (schemes/replay.py): `config` must be the one it was saved with."""
    model_path = Path(model_path)
    out = Path(out) if out else default_output(model_path, config.scheme)
    reads = {"the calibration data": calib, "the evaluation data": eval_dir, "the recipe": recipe, "the plan": plan}
    check_outputs(model_path, out, reads)
    if dry_run and save_plan:
        raise InputError("--dry-run writes nothing: drop it to save the plan (the plan saved is the model written's)")
    if not dry_run:
        size = file_size(model_path) if model_path.is_file() else 0  # the output is at most the input's size
        model_io.check_writable(out, size + REPORTS_BYTES)
        if save_plan:
            replay.check_save_path(Path(save_plan), model_path, out, reads)
    job = _Run(model_path, config, out, progress, ort_config, command, recipe, skip_bad_files, allow_quantized)
    job = replace(job, plan_in=plan and Path(plan), plan_out=save_plan and Path(save_plan))
    with contextlib.ExitStack() as stack:
        written: list[Path] = []
        try:
            made = job.make(stack, calib, eval_dir, dry_run, written)
            if dry_run:
                return QuantizeResult(made.plan, made.report, None)
            release_memory()  # the float graph is gone: the measurement sessions load next
            report = made.report
            measure(report, made.reference, out, made.fid, latency_runs, progress, ort_config, candidate_ours=True)
            ratio = report.latency.ratio if report.latency is not None else None
            report.notes += job.handler.measured_notes(made.plan, ratio, ort_config)
            judged = verdict(report, made.plan, bool(AccuracyTarget(config.min_sqnr, config.max_top1_drop)))
            report.status = judged.status.value
            if judged.status == Status.NOT_QUANTIZED:  # the verdict says it; a planner's bare line would repeat it
                report.warnings = [w for w in report.warnings if w != "nothing was quantized"]
            report.warnings[:0] = [judged.line] if judged.line else []  # the summary leads with it
            if write_report:
                written += write_beside(report, out, html)
        except KeyboardInterrupt as e:
            raise Interrupted(written) from e
        for promise in made.promises:  # what a step promised of the written model, checked on its figures
            broken = promise(report)
            if broken:
                raise GateFailed(f"{broken}: {out}", report)
        if strict and judged.failed:
            raise GateFailed(f"--strict: {judged.line}: {out}", report)
        return QuantizeResult(made.plan, report, out, written)


@dataclass(frozen=True)
class _Made:
    """What is left once the model is written: no reference to the float graph."""

    plan: QuantPlan
    report: Report
    reference: Path  # the model fidelity is measured against (the input, or a renamed copy of it)
    fid: FidelityData
    promises: tuple = ()


@dataclass(frozen=True)
class _Run:
    model_path: Path
    config: QuantConfig
    out: Path
    progress: Progress
    ort_config: dict[str, str] | None
    command: str | None
    recipe: Path | None = None
    skip_bad_files: bool = False
    allow_quantized: bool = False  # quantize what is still float in a model that holds quantized ops
    plan_in: Path | None = None  # a saved plan to replay
    plan_out: Path | None = None  # where to save this run's plan

    @property
    def handler(self) -> SchemeHandler:
        return handler_for(self.config.scheme)

    def make(self, stack, calib: Path | None, eval_dir: Path | None, dry_run: bool, written: list[Path]) -> _Made:
        """Load, plan, the scheme's steps, the report from their parts; unless dry_run, the model rewritten and
        saved, and its per-layer diagnosis. Every reference to the float graph ends with this call."""
        config, handler, progress = self.config, self.handler, self.progress
        model = model_io.load(self.model_path)
        fp = fingerprint(model) if self.plan_in or self.plan_out else ""
        saved = planfile.read(self.plan_in) if self.plan_in else None
        if saved is not None:  # refused before any work when it cannot be replayed exactly
            replayed = replay.check(saved, self.plan_in, self.model_path.name, fp, config, hostcpu.host())
        specs = input_specs(model)
        model, reference, notes = self._prepare(stack, model)
        data = self._data(model, specs, calib, eval_dir)
        if saved is not None:
            planned = handler.replay(model, config, codec.load(saved.plan), saved.state, data)
            planned.plan.notes += replayed
            steps = handler.replay_steps(config, planned)
        else:
            planned = handler.plan(model, config, data, progress)
            planned.plan.notes += notes
            steps = handler.steps(config, planned)
        # inside If branches: each branch quantized as a model of its own (schemes/branches.py)
        items = list(data.calib.items) if data.calib else []
        again = Saved(planned.plan.branches, saved.state) if saved is not None else None
        branches = quantize_branches(
            model, config, handler, data.calib, items, progress, self.ort_config, again, dry_run
        )
        target = AccuracyTarget(config.min_sqnr, config.max_top1_drop)
        if not dry_run and target and planned.fid.src is None and saved is None:
            raise InputError(
                "an accuracy target (--min-sqnr, --max-top1-drop) is measured on data: pass --eval DIR (or --calib DIR)"
            )
        warnings = _warnings(config, model, planned.plan, handler.data_warnings(config, data))
        ran = run(steps, planned.plan, Context(model, reference, planned.fid, progress, self.ort_config), dry_run)
        ran.plan.branches = branches.plans()
        planned.plan.notes += branches.notes()
        if branches.done:  # the main graph's "nothing quantized" is not the model's (the verdict judges the model)
            ran.plan.warnings = [w for w in ran.plan.warnings if not w.startswith("nothing was quantized")]
            warnings = [w for w in warnings if not w.startswith("nothing was quantized")]
        report = self._report(planned, ran, warnings, data)
        if dry_run:
            skipped = [s.name for s in steps if not s.dry_run]
            if skipped:
                report.notes.append(
                    f"--dry-run: the plan before the {', '.join(skipped)}, which measure models and were not run: "
                    "the model written may differ from this plan by what they decide"
                )
            return _Made(ran.plan, report, reference, ran.fid)
        qnames = self._write(model, ran.plan, planned, report, reference, written, branches)
        if self.plan_out:
            name = self.model_path.name
            mine = replay.saved_plan(handler, config, planned, ran.plan, name, fp, hostcpu.host(), branches.state())
            written.append(planfile.save(self.plan_out, mine))
        if qnames and ran.fid.src is not None:
            self._diagnose(model, ran, qnames, report)
        return _Made(ran.plan, report, reference, ran.fid, ran.promises)

    def _data(self, model: onnx.ModelProto, specs, calib: Path | None, eval_dir: Path | None) -> Data:
        """The data folders opened, each checked before the first expensive step."""
        meta = {p.key: p.value for p in model.metadata_props}
        args = dict(specs=specs, model_path=self.model_path, recipe=self.recipe, metadata=meta)
        args |= dict(skip_bad=self.skip_bad_files)
        data = Data(
            open_source(calib, limit=self.config.w8a8.calib_limit, **args) if calib else None,
            open_source(eval_dir, **args) if eval_dir else None,
        )
        for source in (data.calib, data.eval):
            if source is not None:
                source.check()
        return data

    def _diagnose(self, model: onnx.ModelProto, ran: Ran, qnames: dict, report: Report) -> None:
        """The per-layer diagnosis: the float graph's session, the output's."""
        items = ran.fid.items[:LAYER_BATCHES]
        feeds = FidelityData(ran.fid.src, items, "").feeds(self.progress("per-layer pass", len(items)))
        layers = layer_errors(model, self.out, ran.plan, qnames, feeds)
        layers = [x for x in layers if x.op_type not in DATA_MOVEMENT]  # measured, never blamed
        report.layers = [x.to_dict() for x in sorted(layers, key=lambda x: -x.introduced)]
        if layers:
            report.notes.append(PER_LAYER_NOTE)

    def _prepare(self, stack, model: onnx.ModelProto) -> tuple[onnx.ModelProto, Path, list[str]]:
        """Unique node names, preprocessing (one copy in memory, not two), the opset the scheme needs. The model,
        the reference model fidelity is measured against, and notes."""
        found = already_quantized(model.graph.node)
        if found and not self.allow_quantized:
            raise InputError(
                f"{self.model_path.name} is already quantized ({found}): give qcli the float model, "
                "or --allow-quantized to quantize what is still float and leave those as they are"
            )
        reference, renamed = _unique_names(model, self.model_path, stack)
        model, notes = preprocess(model, self.config.fold_batchnorm, inplace=True, keep=self.config.mentions)
        model, opset_note = upgrade_opset(model, self.handler.opset(self.config))
        notes += [opset_note] if opset_note else []
        if renamed:
            notes.append(f"named {renamed} unnamed or duplicate-named node(s)")
        if reference != self.model_path:
            notes.append(
                "the input has duplicate node names, which onnxruntime refuses: fidelity and latency "
                "are measured against the same model with unique node names"
            )
        return model, reference, notes

    def _report(self, planned: Planned, ran: Ran, warnings: list[str], data: Data) -> Report:
        """The report, assembled once: the first plan's notes and warnings, then each step's part in order."""
        report = Report(
            "quantize",
            str(self.model_path),
            str(self.out),
            notes=list(planned.plan.notes),
            warnings=warnings,
            calibration=planned.calibration,
        )
        for part in ran.parts:
            add(report, part)
        describe(report, self.config, ran.plan)
        used = list(data.calib.items) if data.calib else []
        report.provenance = provenance({"calibration": used, "evaluation": list(ran.fid.items)}, self.command)
        report.recipe = data_recipe(data.calib, data.eval)
        report.notes += conversion_notes(data.calib, data.eval)
        report.warnings += source_warnings(data.calib, data.eval)
        return report

    def _write(
        self, model, plan: QuantPlan, planned: Planned, report: Report, reference: Path, written, branches
    ) -> dict:
        """The rewrite (the quantized If branches spliced in), checked and saved atomically; the quantized
        tensors' names (for the diagnosis)."""
        try:
            rewritten = self.handler.rewrite(model, plan, planned)
            branches.splice_into(rewritten.model)
        except (KeyError, IndexError, TypeError, ValueError, OverflowError) as e:
            if self.plan_in is None:
                raise
            raise InputError(f"the plan {self.plan_in.name} does not fit this model ({type(e).__name__}: {e})") from e
        add(report, rewritten.part)
        if not check_output(rewritten.model, reference):
            report.notes.append(
                "the input model does not pass onnx.checker's full check; output checked at "
                "the basic level the input passes"
            )
        saved = self.progress("saving", 1)
        model_io.save_atomic(rewritten.model, self.out)
        saved()
        written.append(self.out)
        return rewritten.qnames


def _unique_names(model: onnx.ModelProto, model_path: Path, stack: contextlib.ExitStack) -> tuple[Path, int]:
    """Name every node uniquely (the plan is keyed by node name). onnxruntime refuses a model with duplicate
    node names, so fidelity is then measured against a renamed copy of the input (same computation)."""
    named = [n.name for n in model.graph.node if n.name]
    duplicates = len(named) != len(set(named))
    renamed = name_nodes(model.graph)
    if not duplicates:
        return model_path, renamed
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qcli-ref-")))
    return model_io.save_for_session(model, tmp, model_path.name), renamed


def _warnings(config: QuantConfig, model: onnx.ModelProto, plan: QuantPlan, data_warnings: list[str]) -> list[str]:
    """Options that would otherwise do nothing, silently, data the scheme does not use, a run that quantizes
    nothing."""
    out = [
        f"--exclude {p!r} matches no node name, op type or glob" for p in unmatched_excludes(config, model.graph.node)
    ]
    return out + config.unread_warnings() + data_warnings + plan.warnings


__all__ = ["quantize", "compare", "default_output", "QuantizeResult"]
