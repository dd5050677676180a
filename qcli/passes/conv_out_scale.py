"""Channel scaling of a conv's own output before an activation that runs in float (HardSwish, SiLU, ...):
the int8 conv writes its output quantized, so that tensor's outlier channels cost as much as the ones
after the activation (channel_scale.py). The conv writes y = conv(x) / s instead (its weights' output rows
and bias divided by s, which the per-channel weight scales absorb), and a float Mul(y, s) gives the
activation what it read before: exact in float. s_c = the channel's range over the median channel's. Only
before activations that stay float anyway: a Relu or Clip qcli folds into the conv's quantizer would become
a float op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, helper

from qcli.core.graph import GraphIndex
from qcli.passes.channel_scale import MIN_SPREAD, channel_spread, outlying, scale_init
from qcli.passes.smooth import Editor, place_muls
from qcli.passes.unscale import ScalingEdit

FLOAT_ACTIVATIONS = {"HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Tanh", "Gelu", "Softplus", "Elu", "Selu"}


@dataclass(frozen=True)
class ScaledOutput:
    conv: str
    tensor: str  # the conv's output, as the activation reads it (the Mul's output now)
    mul_node: str
    spread_before: float
    spread_after: float


def targets(model: ModelProto) -> dict[str, NodeProto]:
    """Conv output tensor -> its Conv, for Convs with a constant float weight (and bias) whose output only
    FLOAT_ACTIVATIONS read."""
    idx = GraphIndex(model.graph)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Conv" or n.domain not in ("", "ai.onnx") or not idx.is_float_const(n.input[1]):
            continue
        if len(n.input) > 2 and n.input[2] and not idx.is_float_const(n.input[2]):
            continue
        readers = idx.consumers.get(n.output[0], [])
        if readers and not idx.escapes(n.output[0]) and all(r.op_type in FLOAT_ACTIVATIONS for r in readers):
            out[n.output[0]] = n
    return out


def scale_outputs(
    model: ModelProto, absmax: dict[str, np.ndarray], spread: float = MIN_SPREAD, edits: list | None = None
) -> list[ScaledOutput]:
    """For each target in `absmax` (per-channel max|y|, axis 1) spread at least `spread`: rows and bias
    divided by s, a Mul by s after. Edits `model` in place; `edits`, if given, gets each edit's ScalingEdit."""
    found = targets(model)
    ed = Editor(model)
    done, muls = [], []
    for t, act in outlying(absmax, found, spread):
        logged = len(ed.log)
        conv = found[t]
        s = np.where(act > 0, np.clip(act / np.median(act[act > 0]), 1 / 256, 256), 1.0).astype(np.float32)
        inv = (1.0 / s.astype(np.float64)).astype(np.float32)
        scale_init(ed, conv, 1, inv, 0)
        if len(conv.input) > 2 and conv.input[2]:
            scale_init(ed, conv, 2, inv, 0)
        y = ed.namer.fresh(f"{t}_scaled")
        conv.output[0] = y
        spatial = ed.value(conv.input[1]).ndim - 2
        name = ed.add(f"{t}_scale", s.reshape(-1, *[1] * spatial))
        muls.append(helper.make_node("Mul", [y, name], [t], name=ed.namer.fresh(f"{conv.name}_out_scale")))
        if edits is not None:
            edits.append(ScalingEdit(muls[-1].name, t, y, tuple(ed.log[logged:])))
        done.append(ScaledOutput(conv.name, t, muls[-1].name, channel_spread(act), channel_spread(act / s)))
    place_muls(model.graph, muls)
    return done
