"""Float-model rewrites that change no output but make activations easier to quantize, run before
calibration: cross-layer equalization (convnets) and SmoothQuant (MatMul/Gemm readers of outlier channels).

Each is exact in float arithmetic; what it did is returned as data for the report."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnx import ModelProto

from qcli.calibration.calibrate import observe
from qcli.core.config import QuantConfig
from qcli.core.plan import Reason, Why, reason
from qcli.core.progress import Progress
from qcli.io.feeds import FeedSource
from qcli.passes.equalize import equalize
from qcli.passes.smooth import ChannelAbsMax, smooth, smooth_targets


@dataclass
class Prepared:
    done: dict = field(default_factory=dict)  # for the report: what was equalized/smoothed, and what not
    notes: list[str] = field(default_factory=list)
    pinned: dict[str, Reason] = field(default_factory=dict)  # nodes the planner must keep float


def prepare(model: ModelProto, config: QuantConfig, src: FeedSource, items: list, progress: Progress) -> Prepared:
    """Edit `model` in place as the config asks."""
    out = Prepared()
    done, notes = out.done, out.notes
    if config.w8a8.equalize:
        result = equalize(model)
        done["equalized"] = [p.to_dict() for p in result.pairs]
        done["not_equalized"] = [{"first": a, "second": b, "reason": why} for a, b, why in result.skipped]
        notes += result.notes() or ["--equalize found no Conv -> (Relu) -> Conv pair to equalize"]
    if config.w8a8.smooth_quant is not None:
        targets = smooth_targets(model)
        if targets:
            observers = {t: ChannelAbsMax() for t in targets}
            batches = (src.load(i) for i in items)
            observe(model, observers, batches, progress("smoothing", len(items)), "SmoothQuant")
            layers = smooth(model, {t: o.value() for t, o in observers.items()}, config.w8a8.smooth_quant)
        else:
            layers = []
        done["smoothed"] = [x.to_dict() for x in layers]
        # An inserted Mul applies 1/s: on int8 it would quantize the unsmoothed tensor again.
        why = reason(Why.UNSUPPORTED, problem="applies SmoothQuant's per-channel scale: its input stays float")
        out.pinned |= {x.mul_node: why for x in layers if x.mul_node}
        notes += [
            f"smoothed {x.tensor} (alpha {x.alpha:g}) into {', '.join(x.readers)} via {x.folded_into}: "
            f"activation max {x.act_absmax_before:.3g} -> {x.act_absmax_after:.3g}"
            for x in layers
        ] or ["--smooth-quant found no MatMul/Gemm with a constant weight reading an activation"]
    return out
