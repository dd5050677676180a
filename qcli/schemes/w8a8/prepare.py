"""Float-model rewrites that change no output but make activations easier to quantize, run before
calibration: cross-layer equalization (convnets) and SmoothQuant (MatMul/Gemm readers of outlier channels).

Each is exact in float arithmetic; what it did is returned as data for the report. What they read from the data
(per-channel maxima) is returned too, and given back on a replayed plan (`observed`): the same edits without
the data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from qcli.calibration.calibrate import observe
from qcli.core.config import QuantConfig
from qcli.core.errors import InputError
from qcli.core.plan import Reason, Why, reason
from qcli.core.progress import Progress
from qcli.io.feeds import FeedSource
from qcli.passes import channel_scale, conv_out_scale
from qcli.passes.equalize import equalize
from qcli.passes.smooth import ChannelAbsMax, smooth, smooth_targets
from qcli.passes.unscale import ScalingEdit


@dataclass
class Prepared:
    done: dict = field(default_factory=dict)  # for the report: what was equalized/smoothed, and what not
    notes: list[str] = field(default_factory=list)
    pinned: dict[str, Reason] = field(default_factory=dict)  # nodes the planner must keep float
    # what was read from the data: "channels" and "smooth", each tensor -> its per-channel max |x|
    observed: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    scaling: list[ScalingEdit] = field(default_factory=list)  # channel scaling's edits, to take back if idle


# One pass over the calibration files with per-channel observers (kind, observers, progress label, error label):
# tensor -> per-channel max |x|
Observe = Callable[[str, dict, str, str], dict[str, np.ndarray]]


def prepare(
    model: ModelProto,
    config: QuantConfig,
    src: FeedSource | None,
    items: list,
    progress: Progress,
    observed: dict[str, dict[str, np.ndarray]] | None = None,
) -> Prepared:
    """Edit `model` in place as the config asks: from the calibration files, or from what a saved plan's run
    observed in them (`observed`; then no file is read)."""
    out = Prepared()
    done, notes = out.done, out.notes

    def channel_maxima(kind: str, observers: dict, step: str, label: str) -> dict[str, np.ndarray]:
        if observed is not None:
            values = {t: observed.get(kind, {}).get(t) for t in observers}
            lacking = [t for t, v in values.items() if v is None]
            if lacking:
                raise InputError(f"the plan lacks the per-channel maxima of {lacking[0]!r} ({label}): save it again")
        else:
            batches = (src.load(i) for i in items)
            observe(model, observers, batches, progress(step, len(items)), label)
            values = {t: o.value() for t, o in observers.items()}
        out.observed[kind] = values
        return values

    if config.w8a8.equalize:
        result = equalize(model)
        done["equalized"] = [p.to_dict() for p in result.pairs]
        done["not_equalized"] = [{"first": a, "second": b, "reason": why} for a, b, why in result.skipped]
        notes += result.notes() or [
            "--equalize found no Conv -> (Relu) -> Conv or Conv -> GlobalAveragePool -> Gemm pair to equalize"
        ]
    if config.w8a8.equalize or config.w8a8.channel_scaling:
        spread = channel_scale.MIN_SPREAD if config.w8a8.equalize else channel_scale.OUTLIER_SPREAD
        _scale_channels(model, channel_maxima, out, spread)
    if config.w8a8.smooth_quant is not None:
        targets = smooth_targets(model)
        if targets:
            maxima = channel_maxima("smooth", {t: ChannelAbsMax() for t in targets}, "smoothing", "SmoothQuant")
            layers = smooth(model, maxima, config.w8a8.smooth_quant)
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


def _scale_channels(model, channel_maxima: Observe, out: Prepared, spread: float) -> None:
    """Per-channel scaling of tensors no scale crosses to (conv_out_scale.py, before a float activation;
    channel_scale.py, after one) where a channel reaches `spread` x the median one, from one pass over the
    calibration files."""
    before, after = conv_out_scale.targets(model), channel_scale.targets(model)
    if not before and not after:
        return
    observers = {t: channel_scale.ChannelsFirstAbsMax() for t in [*before, *after]}
    ranges = channel_maxima("channels", observers, "channel ranges", "channel scaling")
    outputs = conv_out_scale.scale_outputs(model, {t: ranges[t] for t in before}, spread, out.scaling)
    scaled = channel_scale.scale_channels(model, {t: ranges[t] for t in after}, spread, out.scaling)
    out.done["channel_scaled"] = [x.to_dict() for x in scaled]
    out.done["conv_outputs_scaled"] = [x.__dict__ for x in outputs]
    why = reason(Why.UNSUPPORTED, problem="applies a per-channel scale (channel scaling): it runs in float")
    out.pinned |= {x.mul_node: why for x in [*scaled, *outputs]}
    for what, found in (("conv output(s) before a float activation", outputs), ("activation(s)", scaled)):
        if found:
            widest = max(found, key=lambda x: x.spread_before)
            out.notes.append(
                f"channel scaling: {len(found)} {what} with a channel at {spread:g}x the median one or more "
                f"(data-dependent, from the calibration files): widest channel over the median "
                f"{widest.spread_before:.1f}x -> {widest.spread_after:.1f}x at {widest.tensor}"
            )
