"""Reference vs candidate: fidelity per output, interleaved latency, size on disk."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError, InternalError
from qcli.core.qparams import NoiseMeter
from qcli.io.session import Session

MAX_ROUNDS = 5000  # latency(min_s=...): the most rounds a small model is run for


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    sqnr_db: float
    cosine: float
    max_abs: float
    top1_agreement: float | None  # fraction of rows with the same argmax (class-score outputs only)
    # SQNR of each batch alone, in the order read: a file at another scale cannot dominate their average in dB
    # as it can the pooled figure (not in the report's outputs)
    batch_db: tuple[float, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Latency:
    reference_ms: float  # medians
    candidate_ms: float
    runs: int
    # Spread: 10th and 90th percentiles of each model's runs (ms)
    reference_p10_p90: tuple[float, float] | None = None
    candidate_p10_p90: tuple[float, float] | None = None
    # Each model's runs as 11 quantiles (min, p10, ..., p90, max; ms): their distribution, for the HTML report
    reference_quantiles_ms: tuple[float, ...] = ()
    candidate_quantiles_ms: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        return self.candidate_ms / self.reference_ms if self.reference_ms else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def file_size(path: Path) -> int:
    """Model file plus the external-data files it references."""
    from qcli.io.model_io import external_data_files

    return path.stat().st_size + sum(p.stat().st_size for p in external_data_files(path) if p.exists())


SOFTMAX = ("Softmax", "LogSoftmax")
HEADS = ("Gemm", "MatMul")  # a classifier's last layer (or an Add of its bias after one)
# between the head and the output: reshapes, and pooling of per-position scores (logits averaged over tokens)
PASS = ("Flatten", "Reshape", "Squeeze", "Identity", "ReduceMean", "ReduceMax", "GlobalAveragePool")


def class_score_outputs(model_path: Path) -> set[str]:
    return set(class_scores(model_path))


def class_scores(model_path: Path) -> dict[str, str]:
    """See _class_scores; read once per model file (fidelity and the report's note both ask)."""
    st = Path(model_path).stat()
    return dict(_class_scores(str(model_path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=8)
def _class_scores(model_path: str, stamp: int, size: int) -> dict[str, str]:
    """Outputs whose last axis holds class scores, with why: rank-2 [N, C] (C > 1) written by a (Log)Softmax
    or a classifier head (Gemm/MatMul, its bias Add, through reshapes or pooling), or rank-3 [N, T, C] written
    by a (Log)Softmax (per-position classes, e.g. OCR). Hidden states, pooled or normalized embeddings and ids
    are not class scores. Reads the graph only, never the weights."""
    from qcli.io.structure import read_structure

    g = read_structure(model_path).graph
    producer = {o: n for n in g.node for o in n.output}

    def head(name: str, depth: int = 0, added: bool = False) -> str | None:
        n = producer.get(name)
        if n is None or depth > 4:
            return None
        if n.op_type in SOFTMAX + HEADS:
            return n.op_type
        if n.op_type in PASS or (n.op_type == "Add" and not added):  # one bias Add
            more = added or n.op_type == "Add"
            return next((h for h in (head(i, depth + 1, more) for i in n.input[:2]) if h), None)
        return None

    out = {}
    for o in g.output:
        t = o.type.tensor_type
        rank = len(t.shape.dim) if t.HasField("shape") else 0
        floaty = t.elem_type in (1, 10, 11, 16)  # float, float16, double, bfloat16
        classes = t.shape.dim[-1].dim_value if rank else 0  # 0: not fixed
        by = head(o.name) if floaty and classes != 1 else None
        if by and (rank == 2 or (rank == 3 and by in SOFTMAX)):
            out[o.name] = f"[{'N, C' if rank == 2 else 'N, T, C'}] from {by}"
    return out


def _is_class_scores(a: np.ndarray) -> bool:
    return a.ndim in (2, 3) and a.shape[-1] >= 2 and a.dtype.kind == "f"


class _OutputMeter:
    """Streaming fidelity figures of one output."""

    def __init__(self, class_scores: bool) -> None:
        self.noise = NoiseMeter()
        self.batches: list[float] = []
        self.dot = self.cc = self.max_abs = 0.0
        self.agree = self.rows = 0
        self.class_scores = class_scores

    def add(self, r: np.ndarray, c: np.ndarray) -> None:
        if r.dtype.kind != "f" or not _is_class_scores(r):
            self.class_scores = False
        if self.class_scores:
            self.agree += int(np.sum(r.argmax(-1) == c.argmax(-1)))
            self.rows += int(np.prod(r.shape[:-1]))
        r64, c64 = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
        self.batches.append(self.noise.add(r64, c64))
        self.dot += float(r64 @ c64)
        self.cc += float(c64 @ c64)
        self.max_abs = max(self.max_abs, float(np.max(np.abs(r64 - c64))) if r64.size else 0.0)

    def result(self, name: str) -> OutputFidelity:
        sig = self.noise.signal
        cos = self.dot / np.sqrt(sig * self.cc) if sig and self.cc else 1.0
        top1 = self.agree / self.rows if self.class_scores and self.rows else None
        return OutputFidelity(name, self.noise.db, float(cos), self.max_abs, top1, tuple(self.batches))


def _key(feed: Mapping[str, np.ndarray]) -> tuple:
    """A batch by content (files are read again for each candidate: new arrays, same values)."""
    items = sorted(feed.items(), key=lambda kv: kv[0])
    return tuple((k, v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v)).digest()) for k, v in items)


class Recorded:
    """The reference model's outputs on a fixed set of batches, computed once: it stands in for the reference
    session in fidelity(), so candidates tried one after another on the same batches (accuracy target,
    accuracy guard) are compared without the reference model loaded again, nor held in memory meanwhile."""

    def __init__(self, ref: Path, feeds: Iterable[dict[str, np.ndarray]], config: Mapping[str, str] | None = None):
        self.path, self.config = Path(ref), config
        self._by_feed: dict[tuple, list[np.ndarray]] = {}
        self.add(feeds)

    def add(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        """The outputs on more batches (the reference loaded once for all of them, then closed again)."""
        with Session(self.path, config=self.config) as sess:
            self.label = sess.label
            self._inputs, self._outputs = sess.inputs(), sess.outputs()
            self._by_feed.update({_key(f): sess.run(self._outputs, f) for f in feeds})

    def inputs(self) -> list[str]:
        return self._inputs

    def outputs(self) -> list[str]:
        return self._outputs

    def run(self, names: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        values = self._by_feed.get(_key(feed))
        if values is None:
            raise InternalError(f"internal error: a batch the outputs of {self.label} were not recorded on")
        return [values[self._outputs.index(n)] for n in names]


@contextlib.contextmanager
def pair(
    ref: Path | Session | Recorded,
    cand: Path | Session,
    config: Mapping[str, str] | None = None,
    candidate_ours: bool = False,
    threads: int = 0,
) -> Iterator[tuple[Session | Recorded, Session]]:
    """Sessions over both models: those given as paths are opened here and closed on leaving."""
    with contextlib.ExitStack() as stack:
        if isinstance(ref, (str, os.PathLike)):
            ref = stack.enter_context(Session(ref, threads, config))
        if isinstance(cand, (str, os.PathLike)):
            cand = stack.enter_context(Session(cand, threads, config, ours=candidate_ours))
        yield ref, cand


def fidelity(
    ref: Path | Session | Recorded,
    cand: Path | Session,
    feeds: Iterable[dict[str, np.ndarray]],
    config: Mapping[str, str] | None = None,
    candidate_ours: bool = False,
    on_batch: Callable[[dict, dict], None] | None = None,
) -> list[OutputFidelity]:
    """Fidelity per output of `cand` against `ref` (model paths, sessions open already (see pair()), or for the
    reference its outputs recorded on these very batches). on_batch sees each batch's outputs, by name, of both
    (accuracy against labels)."""
    with pair(ref, cand, config, candidate_ours) as (ref, cand):
        return _fidelity(ref, cand, feeds, on_batch)


def _fidelity(
    ref: Session | Recorded,
    cand: Session,
    feeds: Iterable[dict[str, np.ndarray]],
    on_batch: Callable[[dict, dict], None] | None = None,
) -> list[OutputFidelity]:
    names = ref.outputs()
    diffs = []
    for kind, r_names, c_names in (("inputs", ref.inputs(), cand.inputs()), ("outputs", names, cand.outputs())):
        only_r, only_c = sorted(set(r_names) - set(c_names)), sorted(set(c_names) - set(r_names))
        if only_r or only_c:
            diffs.append(f"{kind} only in {ref.label}: {only_r or 'none'}, only in {cand.label}: {only_c or 'none'}")
    if diffs:
        raise InputError(
            f"{ref.label} and {cand.label} differ ({'; '.join(diffs)}); compare needs two versions of the same model"
        )
    scores = class_score_outputs(ref.path)
    meters = {n: _OutputMeter(n in scores) for n in names}
    count = 0
    for feed in feeds:
        r_out, c_out = ref.run(names, feed), cand.run(names, feed)
        for n, r, c in zip(names, r_out, c_out):
            meters[n].add(r, c)
        if on_batch is not None:
            on_batch(dict(zip(names, r_out)), dict(zip(names, c_out)))
        count += 1
    if count == 0:
        raise InputError("no evaluation batches were read")
    return [meters[n].result(n) for n in names]


def latency(
    ref: Path | Session,
    cand: Path | Session,
    feed: dict[str, np.ndarray],
    runs: int = 30,
    warmup: int = 3,
    threads: int = 0,
    config: Mapping[str, str] | None = None,
    candidate_ours: bool = False,
    on_run: Callable[[], None] = lambda: None,
    min_s: float = 0.0,
) -> Latency:
    """Median latency of both models, runs interleaved on the same inputs, thread spinning off; at least `runs`
    rounds and, with min_s, on until that many seconds have passed (small models: many more rounds, up to
    MAX_ROUNDS). Sessions given open already keep their own threads and config."""
    with pair(ref, cand, config, candidate_ours, threads) as (ref, cand):
        for _ in range(warmup):
            ref.run(None, feed)
            cand.run(None, feed)
        rt, ct = [], []
        start, i = time.perf_counter(), 0
        while i < runs or (i < MAX_ROUNDS and time.perf_counter() - start < min_s):
            order = ((ref, rt), (cand, ct)) if i % 2 == 0 else ((cand, ct), (ref, rt))
            for sess, times in order:
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            on_run()
            i += 1
    return _latency(rt, ct, i)


def latency_in_turn(
    ref: Path, cand: Path, feed: dict[str, np.ndarray], runs: int = 30, warmup: int = 3, candidate_ours: bool = False
) -> Latency:
    """As latency(), one model after the other, each session alone: for a pair that would not fit in memory at
    once. Drifts of the machine's speed between the two series count here; interleaving cancels them."""
    series = []
    for path, ours in ((ref, False), (cand, candidate_ours)):
        with Session(path, ours=ours) as sess:
            for _ in range(warmup):
                sess.run(None, feed)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            series.append(times)
    rt, ct = series
    return _latency(rt, ct, runs)


def _latency(rt: list[float], ct: list[float], runs: int) -> Latency:
    med, spread, q = statistics.median, _spread, _quantiles
    return Latency(med(rt) * 1e3, med(ct) * 1e3, runs, spread(rt), spread(ct), q(rt), q(ct))


def _quantiles(seconds: list[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.percentile(np.asarray(seconds) * 1e3, np.arange(0, 101, 10)))


def _spread(seconds: list[float]) -> tuple[float, float]:
    p10, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 90])
    return float(p10), float(p90)
