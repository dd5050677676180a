"""The default accuracy guard: the layers whose int8 form moves the model's outputs a lot stay float.

It replaces a per-tensor rule (keep float every op whose input, quantized alone, measures under 22 dB), which
misfires both ways: a tensor can measure well as a whole while the channels the next layer amplifies are
ruined (the output collapses), and a heavy layer can read a tensor that measures badly while its quantization
barely moves the output (kept float for nothing). The effect is measured where it matters, at the outputs,
on the held-aside calibration files (ranges from the others; the calibration files themselves where fewer
than 5 were given):

1. the all-int8 plan's worst output SQNR; at or above QUIET_DB nothing more is done;
2. candidates: the int8 readers of the activations that quantize worst on their own (suspects(), in
   schemes/w8a8/calibrated.py), then the int8 layers ranked by the noise each adds in the all-int8 model
   (trials.rank_units);
3. the first CANDIDATES, each returned to float alone: a layer whose int8 form causes at least SHARE of the
   output noise is kept float;
4. those kept float are measured together once more, and kept only if that beats the all-int8 plan;
5. while the worst output is still under QUIET_DB (at most ROUNDS rounds in all), the candidates left are tried
   again, each beside those already float: noise sources add, so a layer that hid behind a louder one can
   cause a large share of what is left (Silero VAD: its first encoder conv gained 0.24 dB alone, 4.1 dB once the
   STFT conv was float). From the second round on, only the one that gains most is kept float in a round, and
   never one whose plan would leave nothing on int8.

`--min-act-sqnr` keeps the per-tensor rule as an explicit expert switch (schemes/w8a8/planner.py); an accuracy target
(target.py) replaces this guard, since it states what accuracy is enough.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnx import ModelProto

from qcli.core.plan import QuantPlan, Reason, Why, reason
from qcli.io.feeds import FidelityData
from qcli.steps.base import Context, Outcome, Part, Replanner
from qcli.steps.trials import Apply, trials, w8a8, worst_sqnr

QUIET_DB = 30.0  # worst output SQNR at which int8 noise is no longer worth any speed
CANDIDATES = 8  # layers tried alone
SUSPECTS = 4  # of which at most this many readers of activations that quantize badly on their own
SHARE = 0.25  # share of the output noise a layer must cause to be kept float
ROUNDS = 2  # rounds of candidates (each costs up to CANDIDATES models measured), against the plan kept before


def gain_for(share: float) -> float:
    """dB the worst output gains when a layer causing `share` of its noise returns to float."""
    return -10 * math.log10(1 - share)


@dataclass
class Checked:
    nodes: list[str]
    float_sqnr_db: float  # worst output with these nodes float (beside those an earlier round kept float)
    base_db: float  # the worst output of the plan they were tried against
    round: int = 1

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "gain_db": round(self.float_sqnr_db - self.base_db, 2), "round": self.round}


@dataclass
class GuardResult:
    plan: QuantPlan
    all_int8_db: float
    final_db: float
    checked: list[Checked] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "all_int8_worst_sqnr_db": round(self.all_int8_db, 2),
            "worst_sqnr_db": round(self.final_db, 2),
            "quiet_db": QUIET_DB,
            "share": SHARE,
            "checked": [c.to_dict() for c in self.checked],
            "kept_float": self.kept_float,
        }


def guard(
    model: ModelProto,
    reference: Path,
    first: QuantPlan,
    replan: Callable[[dict[str, Reason]], QuantPlan],
    data: FidelityData,
    suspects: list[list[str]] = (),
    advance: Callable[[], None] = lambda: None,
    apply: Apply = w8a8,
) -> GuardResult:
    """The plan with the layers that dominate the output noise kept float (each model measured calls advance;
    `apply` writes a plan's model)."""
    with trials(model, reference, data, advance, apply) as t:
        base = worst_sqnr(t.measure(first))
        if base >= QUIET_DB:
            return GuardResult(first, base, base, note=f"all-int8 output at {base:.1f} dB (>= {QUIET_DB:g})")
        candidates = _candidates(list(suspects)[:SUSPECTS], t.rank_units(first))
        checked: list[Checked] = []
        keep: dict[str, Reason] = {}
        plan, final, together = first, base, None
        for rnd in range(1, ROUNDS + 1):
            added: dict[str, Reason] = {}
            for unit in [u for u in candidates if not set(u) & keep.keys()]:
                probe = replan({**keep, **{n: reason(Why.ACCURACY) for n in unit}})
                if rnd > 1 and not probe.quantizes():
                    continue  # the model float: no layer hiding behind another, the int8 model given up
                c = Checked(unit, worst_sqnr(t.measure(probe)), final, rnd)
                checked.append(c)
                if c.float_sqnr_db - final >= gain_for(SHARE):
                    share = 1 - 10 ** (-(c.float_sqnr_db - final) / 10)
                    details = {"share": share, "int8_db": final, "float_db": c.float_sqnr_db}
                    added.update({n: reason(Why.ACCURACY, **details) for n in unit})
            if not added:
                break
            if rnd > 1:  # one at a time from here: each one float changes the others' shares again
                best = max((c for c in checked if c.round == rnd), key=lambda c: c.float_sqnr_db)
                added = {n: r for n, r in added.items() if n in best.nodes}
            trial = replan({**keep, **added})
            db = worst_sqnr(t.measure(trial))
            if db <= final:
                together = db if not keep else None  # round 1: the all-int8 plan stays, say why
                break
            keep.update(added)
            plan, final = trial, db
            if final >= QUIET_DB:
                break
        if not keep:
            note = "no layer causes a large share of the output noise"
            if together is not None:
                note = f"the layers that looked worst, float together, did not help ({together:.1f} <= {base:.1f} dB)"
            return GuardResult(first, base, base, checked, note=note)
        return GuardResult(plan, base, final, checked, list(keep))


def _candidates(suspects: list[list[str]], ranked: list[list[str]]) -> list[list[str]]:
    out, seen = [], set()
    for unit in suspects + ranked:
        unit = [n for n in unit if n not in seen]
        if unit and len(out) < CANDIDATES:
            out.append(unit)
            seen.update(unit)
    return out


@dataclass(frozen=True)
class GuardStep:
    """The default accuracy guard as an after-plan step, measured on `data` (the held-aside calibration files)."""

    planner: Replanner
    data: FidelityData
    suspects: tuple[tuple[str, ...], ...] = ()
    apply: Apply = w8a8
    name: str = "accuracy guard"
    dry_run: bool = False

    def run(self, plan: QuantPlan, ctx: Context) -> Outcome:
        advance = ctx.progress("accuracy guard (models tried)", None)
        suspects = [list(s) for s in self.suspects]
        result = guard(ctx.model, ctx.reference, plan, self.planner.replan, self.data, suspects, advance, self.apply)
        notes = (f"accuracy guard: {result.note}; nothing kept float for accuracy",) if result.note else ()
        return Outcome(result.plan, Part({"guard": result.to_dict()}, notes))
