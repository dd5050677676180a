"""How well each planned activation survives 8-bit quantization on its own, measured on calibration data.

Quantizing one tensor per tensor with its planned scale and zero point, and dequantizing it again, gives its
own SQNR: about 35-45 dB for a well-spread tensor, far less when a few outliers set the range (the
LayerNorm and GELU outputs of BERT-style encoders). The planner keeps float the compute ops that read
such tensors: most of the accuracy back for little of the speed.

The noise counted is rounding noise on the values inside the range: values a clipping calibrator
(percentile, entropy, mse) chose to clip are its decision, made on the whole histogram; counted here,
a handful of them would outweigh everything else and undo that choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
from onnx import ModelProto

from qcli.calibration.calibrate import observing
from qcli.core import qparams as qp
from qcli.core.plan import ActivationQuant
from qcli.io.session import Session


def activation_sqnr(
    model: ModelProto,
    acts: dict[str, ActivationQuant],
    batches: Iterable[dict[str, np.ndarray]],
    session: Session | None = None,
) -> dict[str, float]:
    """tensor -> SQNR (dB) of quantize-dequantize with its planned parameters, over the given batches.
    `session`: one over `model` that outputs every planned activation (calibration's), else one is opened."""
    produced = {o for n in model.graph.node for o in n.output}
    names = [t for t in acts if t in produced]
    inputs = [i.name for i in model.graph.input if i.name in acts]  # their values are the feed itself
    if not names and not inputs:
        return {}
    meters = {t: qp.NoiseMeter() for t in names + inputs}
    with contextlib.ExitStack() as stack:
        sess = session or stack.enter_context(observing(model, names, "accuracy-guard"))
        for feed in batches:
            values = list(zip(names, sess.run(names, feed) if names else [])) + [(t, feed[t]) for t in inputs]
            for t, v in values:
                a = acts[t]
                qt = qp.QTYPES[a.qtype]
                p = qp.QParams(np.array(a.scale, np.float32), np.array(a.zero_point, qt.np_dtype), qt)
                half = 0.5 * a.scale  # values that round onto the grid are inside; the rest were clipped
                lo, hi = (qt.qmin - a.zero_point) * a.scale - half, (qt.qmax - a.zero_point) * a.scale + half
                inside = v[(v >= lo) & (v <= hi)]
                meters[t].add(inside, qp.dequantize(qp.quantize(inside, p), p))
    return {t: m.db for t, m in meters.items()}
