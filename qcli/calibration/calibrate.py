"""Run calibration batches through one onnxruntime session and stream every watched tensor into observers."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

import numpy as np
from onnx import ModelProto, TensorProto

from qcli.calibration.observers import OBSERVERS, ObserverSettings, TensorStats
from qcli.calibration.observers.auto import SearchObserver
from qcli.calibration.observers.histogram import HistogramObserver, plot_counts
from qcli.core.config import QuantConfig
from qcli.core.errors import InputError, NonFiniteValues
from qcli.core.graph import data_driven_loops
from qcli.core.overrides import CalibMethod
from qcli.io import model_io
from qcli.io.session import Session, TimeLimit

# A calibration batch of a model with a data-driven Loop may run this long (a batch is normally well under a second)
LOOP_BATCH_SECONDS = 120.0
UPDATE_THREADS = min(4, os.cpu_count() or 1)  # threads streaming one batch's tensors into their observers
THREADED_SIZE = 1 << 16  # tensors of this many elements and more are streamed on those threads
THREADED_BYTES = 64 << 20  # tensor bytes those threads stream at once


class Streaming(Protocol):
    def update(self, x: np.ndarray) -> None: ...


@contextlib.contextmanager
def observing(model: ModelProto, names: Iterable[str], label: str = "calibration") -> Iterator[Session]:
    """One session over `model` that also outputs the float tensors `names`. Calibration and the accuracy
    guard's pass share it (the guard reads a subset of the calibrated tensors): the weights load once."""
    with tempfile.TemporaryDirectory(prefix="qcli-calib-") as tmp:
        outputs = dict.fromkeys(names, TensorProto.FLOAT)
        path = model_io.save_with_outputs(model, outputs, Path(tmp), "calib.onnx")
        with Session(path, label=f"the model ({label} run)", limit=loop_limit(model)) as sess:
            yield sess


def loop_limit(model: ModelProto) -> TimeLimit | None:
    """The time a batch of `model` may run where a Loop's trip count comes from the data, else no limit."""
    loops = data_driven_loops(model.graph)
    return TimeLimit(LOOP_BATCH_SECONDS, f"the Loop {loops[0]!r} runs as the data says") if loops else None


def observe(
    model: ModelProto | Session,
    observers: Mapping[str, Streaming],
    batches: Iterable[dict[str, np.ndarray]],
    on_batch: Callable[[], None] | None = None,
    label: str = "calibration",
) -> tuple[int, dict[str, tuple[int, ...]]]:
    """Expose the observed tensors as extra graph outputs (or use a session from observing() that has them),
    run every batch once, stream each output into its observer and drop it. Returns the number of batches and
    each tensor's shape in the first batch. Memory: one batch's outputs at a time, whatever the number of
    batches."""
    if not isinstance(model, Session):
        with observing(model, observers, label) as sess:
            return observe(sess, observers, batches, on_batch, label)
    watch = list(observers)
    shapes: dict[str, tuple[int, ...]] = {}
    count = 0
    with ThreadPoolExecutor(UPDATE_THREADS) as pool:
        for feed in batches:
            results = model.run(watch, feed)
            failed = _update(pool, [(observers[n], v) for n, v in zip(watch, results)])
            if failed is not None:
                raise InputError(f"{label} batch {count + 1}: tensor {watch[failed[0]]!r} {failed[1]}") from None
            for name, value in zip(watch, results):
                shapes.setdefault(name, tuple(value.shape))
            del results
            count += 1
            if on_batch:
                on_batch()
    if count == 0:
        raise InputError(f"no {label} batches were read")
    return count, shapes


def _update(pool: ThreadPoolExecutor, work: list[tuple[Streaming, np.ndarray]]) -> tuple[int, Exception] | None:
    """Every observer updated with its tensor: the large tensors on the pool's threads (numpy's passes run
    without the interpreter lock), at most THREADED_BYTES of them at once (an update's temporaries are a few
    times its tensor), the small ones here meanwhile. Each observer is updated by one thread, in batch order,
    so the result is the same as one thread's. Returns the first tensor (its index in `work`) that holds NaN
    or infinities, and the error."""
    errors: dict[int, Exception] = {}
    queue = deque(i for i, (_, x) in enumerate(work) if x.size >= THREADED_SIZE)
    running: dict[Future, int] = {}

    def fill() -> None:
        held = sum(work[i][1].nbytes for i in running.values())
        while queue and (not running or held + work[queue[0]][1].nbytes <= THREADED_BYTES):
            i = queue.popleft()
            running[pool.submit(work[i][0].update, work[i][1])] = i
            held += work[i][1].nbytes

    fill()
    for i, (obs, x) in enumerate(work):
        if x.size < THREADED_SIZE:
            try:
                obs.update(x)
            except NonFiniteValues as e:
                errors[i] = e
    while running:
        for done in wait(running, return_when=FIRST_COMPLETED).done:
            i, e = running.pop(done), done.exception()
            if isinstance(e, NonFiniteValues):
                errors[i] = e
            elif e is not None:
                raise e
        fill()
    return (min(errors), errors[min(errors)]) if errors else None


def calibrate(
    model: ModelProto | Session,
    watch: Iterable[str],
    batches: Iterable[dict[str, np.ndarray]],
    config: QuantConfig,
    levels: int = 256,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, TensorStats]:
    """The range of every watched activation, each with its method (config.calib_for: override or global).
    `model`: the float model, or a session from observing() that outputs every watched tensor."""
    observers = _observers(watch, config, levels)
    return _stats(observers, *observe(model, observers, batches, on_batch), config)


def calibrate_then_more(
    model: ModelProto | Session,
    watch: Iterable[str],
    batches: Iterable[dict[str, np.ndarray]],
    more: list,
    config: QuantConfig,
    levels: int = 256,
    on_batch: Callable[[], None] | None = None,
) -> tuple[dict[str, TensorStats], dict[str, TensorStats] | None]:
    """The ranges from `batches`, and (where there are `more` batches, e.g. files held aside to measure
    decisions on) the ranges from all of them: the same observers streamed on, one session (`model`: the float
    model, or a session from observing() that outputs every watched tensor)."""
    observers = _observers(watch, config, levels)
    with contextlib.ExitStack() as stack:
        sess = model if isinstance(model, Session) else stack.enter_context(observing(model, observers))
        count, shapes = observe(sess, observers, batches, on_batch)
        first = _stats(observers, count, shapes, config)
        if not more:
            return first, None
        extra, _ = observe(sess, observers, more, on_batch)
        return first, _stats(observers, count + extra, shapes, config)


def _observers(watch: Iterable[str], config: QuantConfig, levels: int) -> dict:
    observers = {}
    for name in dict.fromkeys(watch):
        method, percentile = config.calib_for(name)
        settings = ObserverSettings(percentile=percentile, levels=levels, moving_average=config.w8a8.moving_average)
        observers[name] = OBSERVERS.get(method.value)(settings)
    return observers


def _stats(
    observers: dict, count: int, shapes: dict[str, tuple[int, ...]], config: QuantConfig
) -> dict[str, TensorStats]:
    """Each tensor's range; with the global `auto` calibrator, the candidates of its `auto` observers too (the
    search at the outputs chooses among them; an `auto` override under another calibrator is minmax)."""
    search = config.w8a8.calibrator == CalibMethod.AUTO
    return {
        name: TensorStats(
            *obs.range(),
            shapes.get(name, ()),
            count,
            obs.chosen(),
            obs.candidates() if search and isinstance(obs, SearchObserver) else None,
            *_picture(obs),
        )
        for name, obs in observers.items()
    }


def _picture(obs) -> tuple[tuple[float, float] | None, tuple[float, ...] | None]:
    h = obs.hist.snapshot() if isinstance(obs, HistogramObserver) else None
    return ((h.rmin, h.rmax), plot_counts(h)) if h is not None else (None, None)
