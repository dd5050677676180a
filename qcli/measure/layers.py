"""The per-layer error: one record and one rule for both diagnoses (diagnose.py: quantize's own model, read at
its QuantizeLinear outputs; layerwise.py: any two versions of a model, matched by tensor name).

A layer's *introduced* error is its output's relative noise power minus the largest of its inputs', so noise
inherited from upstream is not blamed on it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Why quantize's per-layer figures and compare --per-layer's differ for the same tensor (both reports say it).
PER_LAYER_NOTE = (
    "per-layer figures: quantize's are each activation after its QuantizeLinear, compare --per-layer's the float "
    "tensor before it (higher by that rounding); data-movement ops are measured, never blamed (docs/cli.md)"
)


@dataclass(frozen=True)
class LayerError:
    tensor: str
    node: str
    op_type: str
    sqnr_db: float
    introduced: float  # relative noise power added by this layer (0: none; 0.01 is -20 dB)
    nodes: tuple[str, ...] = ()  # quantize's own: the producer and the ops folded into its QuantizeLinear
    position: int | None = None  # the producer's index in the reference graph (graph order, for pictures)

    def to_dict(self) -> dict:
        d = dict(vars(self))
        if not self.nodes:
            del d["nodes"]
        if self.position is None:
            del d["position"]
        return d


def introduced(rel: Mapping[str, float], tensor: str, inputs: Iterable[str]) -> float:
    """What the layer writing `tensor` from `inputs` adds: relative noise powers `rel` (those measured)."""
    upstream = max((rel[i] for i in inputs if i in rel), default=0.0)
    return max(rel[tensor] - upstream, 0.0)
