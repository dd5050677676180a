"""--format auto's timings: every candidate interleaved with the FP32 model, at each timing batch size
(batches.py), one candidate session open at a time, thread spinning off. A candidate's figure at a size is its
median over FP32's median there; every candidate's runs are put on one scale through FP32's median over all
its pairings at that size."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcli.core.errors import QcliError
from qcli.io.session import Session
from qcli.schemes.weight_only.batches import TimingFeeds

MIN_RUNS, MAX_RUNS = 5, 200


@dataclass(frozen=True)
class Timing:
    batch: int
    median_ms: float
    p10_p90_ms: tuple[float, float]
    float_ms: float  # the FP32 model's median at this batch size, in the same interleaved runs

    @property
    def ratio(self) -> float:
        return self.median_ms / self.float_ms


@dataclass
class Timings:
    times: dict[int, dict[str, list[float]]]  # batch size -> "float" or candidate -> seconds per run
    runs: int = 0  # the most rounds any pairing ran
    dropped: list[str] = field(default_factory=list)  # batch sizes the FP32 model itself did not run at, and why

    @property
    def sizes(self) -> list[int]:
        return list(self.times)

    def of(self, name: str) -> tuple[Timing, ...]:
        """The candidate's median (and p10-p90) at every size, beside FP32's."""
        out = []
        for b, by_name in self.times.items():
            ms = np.asarray(by_name[name]) * 1e3
            p10, p90 = np.percentile(ms, [10, 90])
            float_ms = statistics.median(by_name["float"]) * 1e3
            out.append(Timing(b, float(np.median(ms)), (float(p10), float(p90)), float_ms))
        return tuple(out)


def timed(reference: Path, paths: dict, names: list[str], timing: TimingFeeds, budget_s: float, ort_config) -> Timings:
    """Each candidate in `names` (files in `paths`) interleaved with the FP32 model at every size of `timing`,
    for about budget_s seconds in all."""
    with Session(reference, config=ort_config) as ref:
        feeds, dropped = _runnable(ref, timing)
        share = 2 * budget_s / ((len(names) + 1) * len(feeds))  # about the rounds of all of them at once, in pairs
        floats: dict[int, list[float]] = {b: [] for b, _ in feeds}
        pairs, runs = {}, 0
        for c in names:
            with Session(paths[c], config=ort_config, ours=True) as sess:
                for b, feed in feeds:
                    t, n = interleaved({"float": ref, c: sess}, feed, share)
                    pairs[b, c] = (t["float"], t[c])
                    floats[b] += t["float"]
                    runs = max(runs, n)
    times: dict[int, dict[str, list[float]]] = {b: {"float": f} for b, f in floats.items()}
    for (b, c), (f, t) in pairs.items():
        scale = statistics.median(floats[b]) / statistics.median(f)
        times[b][c] = [x * scale for x in t]
    return Timings(times, runs, dropped)


def _runnable(ref: Session, timing: TimingFeeds) -> tuple[list[tuple[int, dict]], list[str]]:
    """The sizes the FP32 model runs at (a model may leave its first axis free and still need its own batch);
    none of them: the data's own batch, else the first failure is raised."""
    ok, dropped, first = [], [], None
    for b, feed in timing.feeds:
        try:
            ref.run(None, feed)
        except QcliError as e:
            first = first or e
            dropped.append(f"not timed at batch {b}: {e}")
        else:
            ok.append((b, feed))
    if not ok and timing.given:
        b, feed = timing.given[0]
        ref.run(None, feed)  # the data as given (validated against the model's inputs)
        ok.append((b, feed))
        dropped.append(f"timed at the data's own batch ({b}) instead")
    if not ok:
        raise first
    return ok, dropped


def interleaved(sessions: dict[str, Session], feed, budget_s: float) -> tuple[dict[str, list[float]], int]:
    """Round-robin runs, the order rotated each round, until budget_s has passed (at least MIN_RUNS rounds)."""
    order = list(sessions)
    for s in sessions.values():
        s.run(None, feed)  # warm-up (first-run allocations, prepacking)
    times: dict[str, list[float]] = {n: [] for n in order}
    start, runs = time.perf_counter(), 0
    while runs < MAX_RUNS and (runs < MIN_RUNS or time.perf_counter() - start < budget_s):
        shift = runs % len(order)
        for name in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(time.perf_counter() - t0)
        runs += 1
    return times, runs
