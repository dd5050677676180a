"""The weight-only after-plan steps: the accuracy target's search (target.py: weights one step more
precise), the weights quantized once (and their errors measured while the calibration statistics are in
memory), then --format auto's choice of form (formats.py) and, where that form still runs slower than
FP32, weight placement (placement.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

from qcli.core.config import WeightFormat
from qcli.core.errors import QcliError
from qcli.core.plan import QuantPlan
from qcli.io import model_io
from qcli.io.feeds import input_specs, synthetic_feed
from qcli.passes.blockwise import apply_weight_only
from qcli.passes.nbits import FP32
from qcli.passes.weight_only import pending_keys
from qcli.schemes.weight_only import formats
from qcli.schemes.weight_only.batches import at_sizes
from qcli.schemes.weight_only.placement import place_weights
from qcli.schemes.weight_only.target import UNITS, Quantized, promoted, sizes
from qcli.steps.base import Context, Outcome, Part
from qcli.steps.target import AccuracyTarget, SearchResult, search, searched

AUTO_MAX_BYTES = 1 << 30  # --format auto times the forms of models up to this size


@dataclass(frozen=True)
class WeightTargetStep:
    """The accuracy target: the fewest weights one step more precise (w4a16: 8-bit blocks, w8a16: float), each
    candidate measured in the form that will be written: `weight_format`'s if explicit; under auto the fastest
    form timed on the first plan, then the exact math (MatMulNBits, fp32 compute) if the target is out of its
    reach."""

    weights: Quantized
    target: AccuracyTarget
    relief: str  # what a weight raised becomes: "8-bit blocks" or "float"
    weight_format: WeightFormat
    timing_batches: tuple[int, ...]
    name: str = "accuracy-target search"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        advance = ctx.progress("accuracy-target search (models tried)", None)
        q, cost = self.weights, sizes(ctx.model, plan).get
        forms = [(f"the form written (--format {self.weight_format.value})", q.writer())]
        if self.weight_format == WeightFormat.AUTO:
            # -inf: no margin to the exact math, no target yet (the search enforces it); argmax flips still count
            first = format_choice(ctx, plan, q.of(ctx.model, plan), -math.inf, self.timing_batches)
            exact = ("the exact math (MatMulNBits, fp32 compute)", q.write_exact)
            fast = (f"{first.chosen}, the fastest form on this CPU before the search", q.writer(*first.form()))
            forms = [exact] if first.form()[:2] == (WeightFormat.ORT, FP32) else [fast, exact]
        found: SearchResult | None = None
        for name, apply in forms:
            replan = partial(promoted, plan)
            found = search(
                ctx.model, ctx.reference, plan, replan, self.target, ctx.fid, advance, apply, UNITS, self.relief, cost
            )
            found.measured_as = name
            if found.met:
                break
        return searched(found, self.target, ctx.fid)


@dataclass(frozen=True)
class QuantizeWeights:
    """Every weight of the plan quantized with the run's algorithm and its error measured, then the calibration
    statistics let go (the format choice's sessions load next)."""

    weights: Quantized
    name: str = "weight quantization"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        todo = pending_keys(ctx.model, plan, set(self.weights.cache))
        algo = plan.weights[0].algo if plan.weights else "rtn"
        self.weights.settle(ctx.model, plan, ctx.progress(f"weights quantized ({algo})", todo))
        return Outcome(plan)


@dataclass(frozen=True)
class FormatStep:
    """--format auto: the form (and MatMulNBits accuracy level) measured fastest on this CPU among those that
    keep the exact math's fidelity (or meet `min_sqnr` against FP32), into the plan's decisions; with
    `place` (measured placement under --objective latency), weights timed back to float where that form runs
    slower than FP32."""

    weights: Quantized
    min_sqnr: float | None
    timing_batches: tuple[int, ...]
    place: bool
    name: str = "weight format choice"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        quantized = self.weights.of(ctx.model, plan)
        choice = format_choice(ctx, plan, quantized, self.min_sqnr, self.timing_batches)
        plan = replace(plan, decisions={**plan.decisions, **choice.decisions()})
        if not (self.place and choice.slower_than_float):
            return Outcome(plan, Part(warnings=tuple(_slower_than_float(choice, self.min_sqnr is None))))
        advance = ctx.progress("measured placement (timings)", None)

        def write(model, p: QuantPlan):  # in the chosen form (the plan's decisions), weights quantized once
            return apply_weight_only(model, p, quantized=quantized)

        start = choice.start()  # the sizes the forms were timed at
        timing = at_sizes(ctx.model, _timing_feeds(ctx, 1)[0], self.timing_batches).only(start)
        result = place_weights(ctx.model, plan, ctx.reference, timing, write, advance, start)
        warnings = (result.verdict,) if result.verdict else ()
        return Outcome(result.plan, Part({"placement": result.to_dict()}, warnings=warnings))


def format_choice(ctx: Context, plan: QuantPlan, quantized, min_sqnr: float | None, timing_batches):
    """formats.choose on the plan and the fidelity data (inputs made from the input specs without data)."""
    size = model_io.model_bytes(ctx.model)
    if size > AUTO_MAX_BYTES:  # every candidate's session at once would break the memory bound
        return formats.unmeasured(
            f"the model ({size / 2**30:.1f} GB) is too large to time every form at once within the memory bound"
        )
    advance = ctx.progress("choosing the weight format (timings)", 1)

    def choose(batches: list) -> formats.FormatChoice:
        timing = at_sizes(ctx.model, batches[0], timing_batches)
        return formats.choose(
            ctx.model,
            plan,
            ctx.reference,
            batches,
            ort_config=ctx.ort_config,
            quantized=quantized,
            min_sqnr=min_sqnr,
            timing=timing,
        )

    try:
        choice = choose(_timing_feeds(ctx, formats.FIDELITY_BATCHES))
    except QcliError as e:
        if ctx.fid.src is not None:
            raise
        choice = formats.unmeasured(f"no data, and inputs made from the input specs did not run ({e})")
    else:
        if ctx.fid.src is None:  # speed does not depend on the values
            choice = replace(choice, why=f"no data: timed on inputs made from the input specs; {choice.why}")
    advance()
    return choice


def _timing_feeds(ctx: Context, limit: int) -> list[dict]:
    """The fidelity data's first `limit` batches, else one input made from the input specs."""
    fid = ctx.fid
    if fid.src is None:
        return [synthetic_feed(input_specs(ctx.model))]
    return [fid.src.load(i) for i in fid.items[:limit]]


def _slower_than_float(choice: formats.FormatChoice, hint: bool) -> list[str]:
    """The exact form chosen but slower than FP32 here: say so, and what the faster forms would cost."""
    chosen = choice.chosen_trial
    if chosen is None or chosen.ratio < 1:
        return []
    faster = [t for t in choice.trials if t.ratio < 1 and not t.accepted]
    alt = "; ".join(f"{t.name} runs {t.ratio:.2f}x, {t.sqnr_vs_exact_db:.1f} dB from the exact math" for t in faster)
    at = f" at batch {max(chosen.timings, key=lambda x: x.ratio).batch}" if len(chosen.timings) > 1 else ""
    return [
        f"--format auto: the only form that keeps the exact math's fidelity ({chosen.name}) runs "
        f"{chosen.ratio:.2f}x FP32{at} on this CPU"
        + (f"; faster but less exact: {alt}" if alt else "")
        + ("; --min-sqnr DB accepts a faster form whose outputs meet it against FP32" if alt and hint else "")
    ]
