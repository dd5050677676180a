"""The batch sizes a weight-only model is timed at (--timing-batch): whether int4 pays depends on the batch
(onnxruntime's MatMulNBits runs a vector kernel for one row and a blocked GEMM for many), so --format auto and
measured placement time every size asked for and judge a form by its worst one. Each size's input is the rows
of one data batch, repeated or cut along the first axis; where the model fixes that axis (or its inputs do not
share it), the data's own batch is the only size timed, and the reason says why."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto

from qcli.io.feeds import input_specs


@dataclass(frozen=True)
class TimingFeeds:
    feeds: tuple[tuple[int, dict[str, np.ndarray]], ...]  # (batch size, input), the sizes asked for in order
    note: str = ""  # why the sizes asked for could not all be made; empty when they were
    given: tuple[tuple[int, dict[str, np.ndarray]], ...] = ()  # the data's own batch: where no size runs

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(b for b, _ in self.feeds)

    def only(self, sizes) -> TimingFeeds:
        """Those of `sizes` this holds (the sizes asked for, or the data's own batch): the ones a model ran at."""
        pool = dict(self.given) | dict(self.feeds)
        return TimingFeeds(tuple((b, pool[b]) for b in sizes if b in pool), self.note)


def _leading(feed: dict[str, np.ndarray]) -> int | None:
    """The size of the first axis every input shares; None where one is a scalar or they differ."""
    sizes = {v.shape[0] if v.ndim else None for v in feed.values()}
    return next(iter(sizes)) if len(sizes) == 1 else None


def as_given(feed: dict[str, np.ndarray]) -> TimingFeeds:
    """The feed at its own batch size (its inputs' first axis, where they share one)."""
    return TimingFeeds(((_leading(feed) or 1, feed),))


def at_sizes(model: ModelProto, feed: dict[str, np.ndarray], sizes: tuple[int, ...]) -> TimingFeeds:
    """`feed` at each of `sizes` along its first axis, where the model leaves that axis free on every input."""
    given = as_given(feed)
    shared = _leading(feed) is not None
    fixed = [s.name for s in input_specs(model) if s.name in feed and s.shape and isinstance(s.shape[0], int)]
    if fixed or not shared:
        why = f"the model fixes the first axis of {', '.join(fixed)}" if fixed else "the inputs share no first axis"
        return TimingFeeds(given.feeds, f"timed at the data's own batch ({given.sizes[0]}) only: {why}")
    return TimingFeeds(tuple((n, rows(feed, n)) for n in sizes), given=given.feeds)


def rows(feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first n rows of every input, the batch repeated where it has fewer."""
    out = {}
    for k, v in feed.items():
        reps = -(-n // v.shape[0])
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:n] if reps > 1 else v[:n])
    return out
