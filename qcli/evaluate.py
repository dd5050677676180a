"""Reference vs candidate: fidelity per output, interleaved latency, size on disk."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .qparams import db
from .session import make_session


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    sqnr_db: float
    cosine: float
    max_abs: float
    top1_agreement: float | None  # fraction of rows with the same argmax (class-score outputs only)


@dataclass(frozen=True)
class Latency:
    reference_ms: float
    candidate_ms: float
    runs: int

    @property
    def ratio(self) -> float:
        return self.candidate_ms / self.reference_ms if self.reference_ms else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def file_size(path: Path) -> int:
    """Model file plus any external-data files next to it that it references."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    size = path.stat().st_size
    locations = set()
    model = onnx.load(str(path), load_external_data=False)
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            locations.update(e.value for e in t.external_data if e.key == "location")
    return size + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).exists())


def class_score_outputs(model_path: Path) -> set[str]:
    """Outputs whose last axis holds class scores: rank-2 [N, C], or rank-3 [N, T, C] written by a
    (Log)Softmax (per-position classes, e.g. OCR). Hidden states [N, T, D] are not class scores."""
    import onnx

    g = onnx.load(str(model_path), load_external_data=False).graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    out = set()
    for o in g.output:
        rank = len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else 0
        if rank == 2 or (rank == 3 and producer.get(o.name) in ("Softmax", "LogSoftmax")):
            out.add(o.name)
    return out


def _is_class_scores(a: np.ndarray) -> bool:
    return a.ndim in (2, 3) and a.shape[-1] >= 2 and a.dtype.kind == "f"


def fidelity(
    ref_path: Path, cand_path: Path, feeds: Iterable[dict[str, np.ndarray]], config: Mapping[str, str] | None = None
) -> list[OutputFidelity]:
    ref, cand = make_session(ref_path, config=config), make_session(cand_path, config=config)
    names = [o.name for o in ref.get_outputs()]
    scores = class_score_outputs(ref_path)
    cand_names = {o.name for o in cand.get_outputs()}
    if set(names) != cand_names or {i.name for i in ref.get_inputs()} != {i.name for i in cand.get_inputs()}:
        raise InputError(
            f"{ref_path.name} and {cand_path.name} have different inputs or outputs; "
            "compare needs two versions of the same model"
        )
    acc = {
        n: {"sig": 0.0, "noise": 0.0, "dot": 0.0, "cc": 0.0, "max": 0.0, "agree": 0, "rows": 0, "cls": True}
        for n in names
    }
    count = 0
    for feed in feeds:
        r_out = ref.run(names, feed)
        c_out = cand.run(names, feed)
        count += 1
        for n, r, c in zip(names, r_out, c_out):
            a = acc[n]
            if r.dtype.kind != "f":
                r, c = r.astype(np.float64), c.astype(np.float64)
                a["cls"] = False
            r64, c64 = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
            a["sig"] += float(r64 @ r64)
            a["noise"] += float((r64 - c64) @ (r64 - c64))
            a["dot"] += float(r64 @ c64)
            a["cc"] += float(c64 @ c64)
            a["max"] = max(a["max"], float(np.max(np.abs(r64 - c64))) if r64.size else 0.0)
            if a["cls"] and n in scores and _is_class_scores(r):
                a["agree"] += int(np.sum(r.argmax(-1) == c.argmax(-1)))
                a["rows"] += int(np.prod(r.shape[:-1]))
            else:
                a["cls"] = False
    if count == 0:
        raise InputError("no evaluation batches were read")
    out = []
    for n in names:
        a = acc[n]
        sq = db(a["sig"], a["noise"])
        cos = a["dot"] / np.sqrt(a["sig"] * a["cc"]) if a["sig"] and a["cc"] else 1.0
        top1 = a["agree"] / a["rows"] if a["cls"] and a["rows"] else None
        out.append(OutputFidelity(n, sq, float(cos), a["max"], top1))
    return out


def latency(
    ref_path: Path,
    cand_path: Path,
    feed: dict[str, np.ndarray],
    runs: int = 30,
    warmup: int = 3,
    threads: int = 0,
    config: Mapping[str, str] | None = None,
) -> Latency:
    """Median latency of both models, runs interleaved on the same inputs, thread spinning off."""
    ref, cand = make_session(ref_path, threads, config), make_session(cand_path, threads, config)
    for _ in range(warmup):
        ref.run(None, feed)
        cand.run(None, feed)
    rt, ct = [], []
    for i in range(runs):
        order = ((ref, rt), (cand, ct)) if i % 2 == 0 else ((cand, ct), (ref, rt))
        for sess, times in order:
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
    return Latency(statistics.median(rt) * 1e3, statistics.median(ct) * 1e3, runs)
