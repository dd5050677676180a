"""The timing rule both placements share (W8A8's measured placement, weight-only's weight placement): what
counts as faster, how long a comparison runs, and when two models may be open at once within the memory bound.
Latency is a ratio of medians over interleaved runs with thread spinning off (measure/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

from qcli.io.session import Session
from qcli.measure import evaluate

MARGIN = 0.03  # a change must save at least this share of the time to count (run-to-run noise)
RUNS, WARMUP = 20, 3
FIRST_RUNS, CLEAR = 8, 3 * MARGIN  # a first look settles clear differences
CONFIRM_S = 1.0  # ratio_of(runs=...): a confirmation runs at least this long
# Peak memory of `quantize`: at most BOUND_TIMES x the model's size + BOUND_PLUS; RESIDENT is what Python, numpy,
# onnx and onnxruntime take by themselves.
BOUND_TIMES, BOUND_PLUS, RESIDENT = 2, 500_000_000, 150_000_000


def ratio_of(a: Path | Session, b: Path | Session, feed: dict, in_turn: bool = False, runs: int | None = None) -> float:
    """Median latency of model b over model a (files, or sessions open over them) on the same input, spinning
    off: runs interleaved, or with in_turn (files) one model's runs after the other's, one session at a time.
    Interleaved, FIRST_RUNS decide a clear difference (at least CLEAR either way); a closer one is timed again
    over RUNS on the same sessions. `runs`: that many interleaved runs and at least CONFIRM_S seconds, no first
    look (a verdict to confirm: a model of a fraction of a millisecond needs thousands of runs to settle)."""
    if in_turn:
        return evaluate.latency_in_turn(a, b, feed, runs=runs or RUNS, warmup=WARMUP, candidate_ours=True).ratio
    with evaluate.pair(a, b, candidate_ours=True) as (ra, rb):
        if runs:
            return evaluate.latency(ra, rb, feed, runs=runs, warmup=WARMUP, min_s=CONFIRM_S).ratio
        first = evaluate.latency(ra, rb, feed, runs=FIRST_RUNS, warmup=WARMUP).ratio
        if abs(first - 1.0) >= CLEAR:
            return first
        return evaluate.latency(ra, rb, feed, runs=RUNS, warmup=0).ratio


def fits_together(held: int, a: Path, b: Path, reference: Path) -> bool:
    """Whether sessions over `a` and `b` (about their files' size each), beside `held` bytes of model graphs in
    memory, stay within the memory bound of the reference's size: else they are timed one after the other."""
    sessions = evaluate.file_size(a) + evaluate.file_size(b)
    return held + sessions + RESIDENT <= BOUND_TIMES * evaluate.file_size(reference) + BOUND_PLUS
