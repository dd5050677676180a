"""Channel scaling after activations that no scale can cross (HardSwish, Clip/ReLU6, SiLU, ...): the tensor
that is quantized gets channels of like range, exactly.

Cross-layer equalization (equalize.py) moves a per-channel scale through the activation between two convs,
which only works where f(x * s) == f(x) * s (Relu). HardSwish has fixed breakpoints, so its output T keeps the
outlier channels its producer's folded BatchNorm gives it (one channel of a PicoDet-style tensor reaching 128
where the median channel's range is 3.8: one 8-bit range for T leaves the others a few levels). Here T is
left as it is (the activation runs in float anyway) and a per-channel Mul(T, 1/s) feeds the readers, whose
weights absorb s along their input channels (Conv(T, W) == Conv(T / s, W * s)): the quantized tensor is
T / s. For a depthwise reader the scale lands in its own output channel, which its per-channel weight scale
absorbs at no cost, so s_c = max|T_c| / the median channel's; for a dense reader, a larger input channel
column widens every output channel's weight range, so s_c balances both as SmoothQuant does:
s_c = max|T_c|^ALPHA / max|W_c|^(1 - ALPHA), normalised to the median channel. Data-dependent (the channel
ranges come from calibration files), recorded as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto

from qcli.core.graph import GraphIndex, attr
from qcli.passes.smooth import ChannelAbsMax, Editor, insert_mul, place_muls
from qcli.passes.unscale import ScalingEdit

ACTIVATIONS = {"HardSwish", "Clip", "HardSigmoid", "Mul", "Sigmoid", "Tanh", "Gelu", "Elu", "Selu", "Softplus"}
ALPHA = 0.5  # dense readers: the share of an activation channel's range moved into the weights
MIN_SPREAD = 4.0  # --equalize: tensors whose widest channel reaches this many times the median channel's
# By default only outliers: the benchmark's convnets and detectors measured 4.7-8.5x at most, the PicoDet-style
# detector 260x before and 541x after its activations (its int8 output 0.3 dB without, 14.5 dB with)
OUTLIER_SPREAD = 16.0


class ChannelsFirstAbsMax(ChannelAbsMax):
    """Per-channel max|x| along axis 1 (NCHW), streamed."""

    def update(self, x: np.ndarray) -> None:
        super().update(np.moveaxis(np.asarray(x), 1, -1))


@dataclass(frozen=True)
class Scaled:
    tensor: str
    readers: tuple[str, ...]
    mul_node: str
    spread_before: float  # widest channel's max|x| over the median channel's
    spread_after: float

    def to_dict(self) -> dict:
        return {**self.__dict__, "readers": list(self.readers)}


def targets(model: ModelProto) -> dict[str, list[NodeProto]]:
    """Float activations (outputs of ACTIVATIONS ops) whose every reader is a Conv reading them as X with a
    constant float weight: dense (group 1) or depthwise (one input channel per group)."""
    idx = GraphIndex(model.graph)
    out = {}
    for node in model.graph.node:
        if node.op_type not in ACTIVATIONS or node.domain not in ("", "ai.onnx"):
            continue
        t = node.output[0]
        readers = idx.consumers.get(t, [])
        if readers and not idx.escapes(t) and all(_conv_reader(r, t, idx) for r in readers):
            out[t] = readers
    return out


def _conv_reader(node: NodeProto, t: str, idx: GraphIndex) -> bool:
    if node.op_type != "Conv" or node.input[0] != t or list(node.input).count(t) != 1:
        return False
    if len(node.input) < 2 or not idx.is_float_const(node.input[1]):
        return False
    dims = idx.inits[node.input[1]].dims
    group = attr(node, "group", 1)
    return group == 1 or (dims[1] == 1 and group == dims[0])


def scale_channels(
    model: ModelProto, absmax: dict[str, np.ndarray], spread: float = MIN_SPREAD, edits: list | None = None
) -> list[Scaled]:
    """Insert the scaling Mul for every target with per-channel max|x| in `absmax` (axis 1) whose spread is
    at least `spread`; edits `model` in place. The float model computes the same up to rounding. `edits`, if
    given, gets each edit's ScalingEdit (unscale.py can take it back)."""
    found = targets(model)
    ed = Editor(model)
    done, muls = [], []
    for t, act in outlying(absmax, found, spread):
        logged = len(ed.log)
        readers = found[t]
        s = _scales(act, readers, ed)
        for r in readers:
            _scale_weight(ed, r, s)
        spatial = ed.value(readers[0].input[1]).ndim - 2  # [C, 1, 1]: broadcast along NCHW's channel axis
        inv = (1.0 / s).astype(np.float32).reshape(-1, *[1] * spatial)
        mul = insert_mul(model.graph, ed, t, readers, inv)
        muls.append(mul)
        if edits is not None:
            edits.append(ScalingEdit(mul.name, t, mul.output[0], tuple(ed.log[logged:])))
        after = act / s
        done.append(Scaled(t, tuple(r.name for r in readers), mul.name, channel_spread(act), channel_spread(after)))
    place_muls(model.graph, muls)
    return done


def outlying(absmax: dict[str, np.ndarray], found: dict, spread: float):
    """(tensor, its per-channel max|x| as float64) for the targets whose widest channel reaches `spread` x
    the median (non-zero) channel's."""
    for t, act in absmax.items():
        act = np.asarray(act, np.float64)
        live = act[act > 0]
        if t in found and live.size and act.max() >= spread * np.median(live):
            yield t, act


def channel_spread(act: np.ndarray) -> float:
    live = act[act > 0]
    return float(live.max() / np.median(live)) if live.size else 1.0


def _scales(act: np.ndarray, readers: list[NodeProto], ed: Editor) -> np.ndarray:
    median = float(np.median(act[act > 0]))
    dense = [r for r in readers if attr(r, "group", 1) == 1]
    if not dense:  # depthwise only: the weights' per-channel scales absorb s whole
        s = act / median
    else:
        w = np.max([_input_channel_max(ed.value(r.input[1])) for r in dense], axis=0)
        raw = np.power(np.maximum(act, 1e-12), ALPHA) / np.power(np.maximum(w, 1e-12), 1 - ALPHA)
        s = raw / np.median(raw[act > 0])
    return np.where(act > 0, np.clip(s, 1 / 256, 256), 1.0).astype(np.float32)


def _input_channel_max(w: np.ndarray) -> np.ndarray:
    return np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != 1))


def _scale_weight(ed: Editor, node: NodeProto, s: np.ndarray) -> None:
    """W * s along the input channels: axis 1 of a dense conv's weight, axis 0 of a depthwise one's."""
    scale_init(ed, node, 1, s, 1 if attr(node, "group", 1) == 1 else 0)


def scale_init(ed: Editor, node: NodeProto, i: int, factor: np.ndarray, axis: int) -> None:
    """node.input[i] (a constant) times `factor` along `axis`; a copy where another node reads it too."""
    v = ed.value(node.input[i]).astype(np.float64)
    shape = [1] * v.ndim
    shape[axis] = factor.size
    ed.put(node, i, (v * factor.reshape(shape)).astype(np.float32), f"{node.input[i]}_scaled")
