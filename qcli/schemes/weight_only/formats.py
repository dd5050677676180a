"""--format auto: which weight-only form, and which MatMulNBits accuracy level, runs fastest on this CPU while
computing what the quantized weights mean.

Candidates, all written from the same quantized weights:
  qdq       DequantizeLinear -> MatMul, portable; onnxruntime fuses it into MatMulNBits at its session's
            accuracy level (session.qdq_matmulnbits_accuracy_level, default 4: int8 compute)
  ort-fp32  MatMulNBits, accuracy level 0: the activations stay fp32
  ort-int8  MatMulNBits, accuracy level 4: the activations are quantized to int8 per block (faster where int8
            dot products are; it can flip the argmax of small LMs, onnxruntime issue 29849)
Gather tables (embeddings) are written as onnxruntime's GatherBlockQuantized under every candidate: 4-bit codes,
where the portable form stores one code per byte (standard Gather reads no 4-bit type); either dequantizes only
the rows gathered, so the choice does not move the timings.
Fidelity, against the exact math (the qdq model run with graph optimizations off: each weight dequantized, then
an fp32 MatMul): a candidate is accepted when on every output its deviation from the exact math is at least
MARGIN_DB under the quantization noise itself (exact vs the FP32 model) or at float-rounding level, and when on
score outputs it flips no more argmax rows than the fp32-compute form does (float rounding near ties). With an
accuracy target (--min-sqnr) the target replaces the margin: a candidate must keep every output at that SQNR
against FP32 (the user said what is enough), and still flip no more argmax rows.
Speed (timing.py): each candidate's median latency over FP32's, in runs interleaved with the FP32 model at
every timing batch size (--timing-batch, default 1 and 8: batches.py), for about budget_s seconds in all; a
candidate's figure is its worst size's. Choice: the accepted candidate with the lowest figure; one within TIE of
it that comes earlier in CANDIDATES (more portable, then more exact) wins the tie.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import ModelProto

from qcli.core.config import WeightFormat
from qcli.core.plan import QuantPlan
from qcli.core.qparams import NoiseMeter
from qcli.io import model_io
from qcli.io.session import Session, release_memory, session_options
from qcli.measure import evaluate
from qcli.passes.blockwise import apply_weight_only
from qcli.passes.nbits import FP32, INT8
from qcli.passes.weight_only import Key, quantize_plan
from qcli.schemes.weight_only.batches import TimingFeeds, as_given
from qcli.schemes.weight_only.timing import Timing, Timings, timed
from qcli.weights import BlockWeight

MARGIN_DB = 6.0  # a candidate's own noise at most 1/4 of the quantization noise's power: <= 1 dB off the exact SQNR
ROUNDING_DB = 80.0  # closer than this to the exact math is float rounding (weights that quantize exactly)
TIE = 0.03  # medians within 3% count as equally fast
FIDELITY_BATCHES = 4
TABLES_WHY = (
    "Gather tables as onnxruntime's GatherBlockQuantized: 4-bit codes, half the bytes of the portable form's one "
    "code per byte (standard Gather reads no 4-bit type), the same rows dequantized the same way"
)
LEVELS = {FP32: "fp32 compute", INT8: "int8 compute (activations quantized per block)"}


@dataclass(frozen=True)
class Candidate:
    name: str
    weight_format: WeightFormat
    accuracy_level: int | None  # MatMulNBits attribute; None: the qdq form, fused at the session's level


EXACT = Candidate("exact", WeightFormat.QDQ, None)  # the qdq form, run with graph optimizations off
CANDIDATES = (
    Candidate("qdq", WeightFormat.QDQ, None),
    Candidate("ort-fp32", WeightFormat.ORT, FP32),
    Candidate("ort-int8", WeightFormat.ORT, INT8),
)


@dataclass(frozen=True)
class Trial:
    name: str
    timings: tuple[Timing, ...]  # at each timing batch size, beside FP32's
    sqnr_vs_exact_db: float  # worst output: the candidate against the exact dequantized math
    flips: int  # score-output rows whose argmax differs from the exact math's
    rows: int
    accepted: bool
    why: str

    @property
    def ratio(self) -> float:
        """Its time over FP32's at its worst batch size."""
        return max(t.ratio for t in self.timings)


@dataclass(frozen=True)
class FormatChoice:
    weight_format: WeightFormat
    accuracy_level: int | None
    why: str
    trials: tuple[Trial, ...] = ()
    quantization_db: float | None = None  # worst output: exact dequantized math vs the FP32 model
    runs: int = 0
    tables: WeightFormat | None = None  # the Gather tables' form, where it differs from weight_format's
    chosen: str = ""  # the candidate's name (CANDIDATES), where forms were timed

    @property
    def chosen_trial(self) -> Trial | None:
        """The chosen candidate's timing and fidelity, where forms were timed."""
        return next((t for t in self.trials if t.name == self.chosen), None)

    @property
    def slower_than_float(self) -> float | None:
        """The chosen form's time over FP32's at its worst batch size, where it was timed beyond TIE slower."""
        t = self.chosen_trial
        return t.ratio if t is not None and t.ratio > 1 + TIE else None

    def start(self) -> dict[int, float]:
        """The chosen form's time over FP32's at each batch size timed (empty where forms were not timed)."""
        t = self.chosen_trial
        return {x.batch: x.ratio for x in t.timings} if t else {}

    def form(self) -> tuple[WeightFormat, int | None, WeightFormat | None]:
        """What apply_weight_only writes for this choice: weight format, accuracy level, tables' format."""
        return self.weight_format, self.accuracy_level, self.tables

    def decisions(self) -> dict[str, dict]:
        """Entries for QuantPlan.decisions: apply_weight_only reads them; the report shows them."""
        measured = {"batches": list(self.start()), "runs": self.runs, "trials": [asdict(t) for t in self.trials]}
        out = {"weight_format": {"value": self.weight_format.value, "why": self.why, **measured}}
        if self.tables is not None:
            out["table_format"] = {"value": self.tables.value, "why": TABLES_WHY}
        if self.accuracy_level is not None:
            level = LEVELS.get(self.accuracy_level, f"level {self.accuracy_level}")
            out["accuracy_level"] = {"value": self.accuracy_level, "why": f"{level}; {self.why}"}
        return out


def unmeasured(reason: str) -> FormatChoice:
    """The choice without timings: MatMulNBits with fp32 compute, the exact math in the form onnxruntime's own
    int4 quantizer writes (onnxruntime fuses the portable form into the same kernel, at int8 compute)."""
    why = f"{reason}: onnxruntime's MatMulNBits with fp32 compute, the exact math (--format qdq: portable ONNX)"
    return FormatChoice(WeightFormat.ORT, FP32, why)


def choose(
    model: ModelProto,
    plan: QuantPlan,
    reference: Path,
    feeds: list[dict[str, np.ndarray]],
    candidates: tuple[Candidate, ...] = CANDIDATES,
    budget_s: float = 3.0,
    ort_config: dict[str, str] | None = None,
    quantized: dict[Key, BlockWeight] | None = None,
    min_sqnr: float | None = None,
    timing: TimingFeeds | None = None,
) -> FormatChoice:
    """Measure `candidates` (written from `model`, the float graph the plan was made on) against the FP32
    model at `reference`: fidelity on `feeds`, speed on `timing` (default: the first feed as it is). Leaves
    `model` unchanged. `quantized` (weight_only.quantize_plan) saves quantizing the weights again; pass the
    same to apply_weight_only. With `min_sqnr` (an accuracy target) a candidate must also keep every output at that
    SQNR against FP32."""
    if not feeds:
        return unmeasured("no data to measure on (--eval or --calib)")
    if not plan.weights:
        return FormatChoice(WeightFormat.QDQ, None, "nothing quantized: no weight-only operator to choose")
    quantized = quantize_plan(model, plan) if quantized is None else quantized
    tables = WeightFormat.ORT if any(w.role == "embedding" for w in plan.weights) else None
    with tempfile.TemporaryDirectory(prefix="qcli-format-") as tmp:
        paths: dict[str, Path] = {}
        for c in candidates if any(c.name == "qdq" for c in candidates) else (EXACT, *candidates):
            written = apply_weight_only(model, plan, False, c.weight_format, c.accuracy_level, quantized, tables)
            paths[c.name] = model_io.save_for_session(written, Path(tmp), f"{c.name}.onnx")
            del written
        release_memory()
        names = [c.name for c in candidates]
        exact = paths.get("qdq", paths.get(EXACT.name))
        fid = _fidelity(model, reference, exact, paths, names, feeds[:FIDELITY_BATCHES], ort_config)
        timing = timing or as_given(feeds[0])
        times = timed(reference, paths, names, timing, budget_s, ort_config)
    choice = _decide(candidates, fid, times, min_sqnr)
    if timing.note or times.dropped:
        choice = replace(choice, why="; ".join([choice.why, timing.note, *times.dropped]).replace("; ; ", "; "))
    return replace(choice, tables=tables) if tables and choice.weight_format == WeightFormat.QDQ else choice


@dataclass
class _Fidelity:
    quantization: dict[str, NoiseMeter]  # per output: exact vs FP32
    deviation: dict[str, dict[str, NoiseMeter]]  # per candidate, per output: candidate vs exact
    flips: dict[str, int]
    vs_float: dict[str, dict[str, NoiseMeter]] = field(default_factory=dict)  # per candidate, output: vs FP32
    rows: int = 0


def _fidelity(model, reference: Path, exact_path: Path, paths: dict, names: list[str], feeds, ort_config) -> _Fidelity:
    """The exact math's outputs recorded first, then the FP32 model's, then one candidate session at a time
    (memory: one session open at a time besides the graph held)."""
    so = session_options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # DQ then MatMul, as written
    so.enable_cpu_mem_arena = False  # each run dequantizes every weight: give that memory back after it
    exact = ort.InferenceSession(str(exact_path), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in exact.get_outputs()]
    wants = [dict(zip(outs, exact.run(outs, feed))) for feed in feeds]
    del exact
    release_memory()
    scores = score_outputs(model, reference)
    meters = {c: {n: NoiseMeter() for n in outs} for c in names}
    fid = _Fidelity({n: NoiseMeter() for n in outs}, meters, {}, {c: {n: NoiseMeter() for n in outs} for c in names})
    fid.flips = dict.fromkeys(names, 0)
    floats = []
    with Session(reference) as ref:
        for feed, want in zip(feeds, wants):
            floats.append(dict(zip(outs, ref.run(outs, feed))))
            for n in outs:
                fid.quantization[n].add(floats[-1][n], want[n])
            fid.rows += sum(int(np.prod(want[n].shape[:-1])) for n in outs if n in scores and want[n].ndim >= 2)
    for c in names:
        with Session(paths[c], config=ort_config, ours=True) as sess:
            for feed, want, fp32 in zip(feeds, wants, floats):
                for n, got in zip(outs, sess.run(outs, feed)):
                    fid.deviation[c][n].add(want[n], got)
                    fid.vs_float[c][n].add(fp32[n], got)
                    if n in scores and got.ndim >= 2 and got.shape[-1] >= 2:
                        fid.flips[c] += int(np.sum(got.argmax(-1) != want[n].argmax(-1)))
    return fid


def score_outputs(model: ModelProto, reference: Path) -> set[str]:
    """Outputs whose argmax means something: class scores (evaluate.class_score_outputs) and outputs written by
    a final linear layer (MatMul/Gemm, or an Add after one), such as a language model's logits."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def linear(name: str, after_add: bool = False) -> bool:
        n = producer.get(name)
        if n is None:
            return False
        if n.op_type in ("MatMul", "Gemm"):
            return True
        return n.op_type == "Add" and not after_add and any(linear(i, True) for i in n.input)

    return set(evaluate.class_score_outputs(reference)) | {o.name for o in model.graph.output if linear(o.name)}


def _problems(name: str, fid: _Fidelity, allowed_flips: int, min_sqnr: float | None = None) -> list[str]:
    """Why candidate `name` does not compute what the quantized weights mean, or misses the accuracy target
    (empty: neither)."""
    out = []
    for n, m in fid.vs_float.get(name, {}).items():
        if min_sqnr is not None and m.db < min_sqnr:
            out.append(f"{n} at {m.db:.1f} dB against FP32 misses --min-sqnr {min_sqnr:g}")
    for n, dev in fid.deviation[name].items() if min_sqnr is None else ():
        need = min(fid.quantization[n].db + MARGIN_DB, ROUNDING_DB)
        if dev.db < need:
            out.append(
                f"{n} is {dev.db:.1f} dB from the exact math (needs {need:.1f}: {MARGIN_DB:g} dB under the "
                f"quantization noise {fid.quantization[n].db:.1f} dB, or float rounding)"
            )
    if fid.flips[name] > allowed_flips:
        out.append(
            f"{fid.flips[name]} of {fid.rows} argmax rows differ from the exact math's (fp32 compute: {allowed_flips})"
        )
    return out


def _decide(candidates, fid: _Fidelity, timings: Timings, min_sqnr: float | None = None) -> FormatChoice:
    quant_db = min(m.db for m in fid.quantization.values())
    allowed = fid.flips.get("ort-fp32", 0)
    trials = []
    for c in candidates:
        dev_db = min((m.db for m in fid.deviation[c.name].values()), default=float("inf"))
        problems = _problems(c.name, fid, allowed, min_sqnr)
        why = "; ".join(problems) or f"{dev_db:.1f} dB from the exact math (quantization noise {quant_db:.1f} dB)"
        trials.append(Trial(c.name, timings.of(c.name), dev_db, fid.flips[c.name], fid.rows, not problems, why))
    ok = [t for t in trials if t.accepted] or [t for t in trials if t.name == "ort-fp32"] or trials
    fastest = min(t.ratio for t in ok)
    best = next(t for t in ok if t.ratio <= fastest * (1 + TIE))
    c = next(c for c in candidates if c.name == best.name)
    sizes = ", ".join(map(str, timings.sizes))
    timing = "; ".join(f"{t.name} " + ", ".join(f"{x.ratio:.2f}" for x in t.timings) for t in trials)
    rejected = "; ".join(f"{t.name} rejected: {t.why}" for t in trials if not t.accepted)
    why = (
        f"{best.name}: the fastest accepted on this CPU (time over FP32's at batch {sizes}: {timing}; "
        f"{timings.runs} runs)"
    )
    why += f"; {rejected}" if rejected else ""
    return FormatChoice(c.weight_format, c.accuracy_level, why, tuple(trials), quant_db, timings.runs, chosen=c.name)
