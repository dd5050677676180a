"""Accuracy against labels: top-1 and top-5 of the reference and the candidate on a class-score output, and the
drop in percentage points. Streams: one batch of outputs at a time, labels consumed in order."""

from __future__ import annotations

import numpy as np

from qcli.core.errors import InputError

TOPS = (1, 5)


class AccuracyMeter:
    """Fed each batch's outputs by name (evaluate.fidelity's on_batch); scores the first class-score output."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.output, self.seen = labels, None, 0
        self.hits = {m: {k: 0 for k in TOPS} for m in ("reference", "candidate")}
        self.unscorable: str | None = None  # why the labels score nothing (the model has no class scores)

    def add(self, ref_outputs: dict[str, np.ndarray], cand_outputs: dict[str, np.ndarray]) -> None:
        if self.unscorable:
            return
        if self.output is None:
            self.output = scores_output(ref_outputs)
            if self.output is None:  # a model's outputs, not a data error: measured without accuracy, and said
                self.unscorable = (
                    "labels were given (labels.npy or class folders), but no output holds class scores [N, C]: "
                    f"the outputs are {', '.join(f'{n} {list(a.shape)}' for n, a in ref_outputs.items())}"
                )
                return
        self._add(ref_outputs[self.output], cand_outputs[self.output])

    def _add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """One batch of class scores [N, C] from each model."""
        n = ref.shape[0]
        if self.seen + n > self.labels.size:
            raise InputError(f"{self.labels.size} labels for more samples than that: one label per sample")
        y = self.labels[self.seen : self.seen + n]
        if y.size and (y.min() < 0 or y.max() >= ref.shape[-1]):
            raise InputError(f"a label ({int(y.max())}) is not a class of output {self.output!r} ({ref.shape[-1]})")
        for who, scores in (("reference", ref), ("candidate", cand)):
            order = np.argsort(-scores.reshape(n, -1), axis=1, kind="stable")[:, : max(TOPS)]
            for k in TOPS:
                self.hits[who][k] += int(np.sum(np.any(order[:, :k] == y[:, None], axis=1)))
        self.seen += n

    def result(self) -> dict | None:
        """Top-1/top-5 of both models and the drop; None where no output holds class scores."""
        if self.unscorable:
            return None
        if self.seen != self.labels.size:
            raise InputError(f"{self.labels.size} labels for {self.seen} samples: one label per sample, in order")
        out: dict = {"output": self.output, "samples": self.seen}
        for k in TOPS:
            ref, cand = (self.hits[w][k] / self.seen for w in ("reference", "candidate"))
            out[f"top{k}"] = {"reference": ref, "candidate": cand, "drop_pct": round((ref - cand) * 100, 4)}
        return out


def scores_output(outputs: dict[str, np.ndarray]) -> str | None:
    """The first output holding one row of class scores per sample ([N, C], C >= 2)."""
    return next((n for n, a in outputs.items() if a.ndim == 2 and a.shape[1] >= 2 and a.dtype.kind == "f"), None)
