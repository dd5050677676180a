"""The data-aware weight algorithms through the weight-only pipeline (statistics collected from the model, keyed
by weight, rows oriented as the quantizer expects: MatMul [K, N], Gemm transB=1 with alpha), against
onnxruntime running the float model on rows the statistics never saw."""

from __future__ import annotations

import numpy as np
import pytest
from checks import run, sqnr
from weight_data import correlated, two_layer

from qcli.core.config import QuantConfig, Scheme
from qcli.passes.blockwise import apply_weight_only
from qcli.passes.weight_only import quantize_plan
from qcli.schemes.weight_only.planner import plan_w4a16
from qcli.schemes.weight_only.stats import collect


def _db(m, algo: str, cal, new) -> float:
    plan = plan_w4a16(m, QuantConfig.of(scheme=Scheme.W4A16, weight_algo=algo, weight_format="qdq"))
    stats = collect(m, plan, cal) if algo != "rtn" else None
    q = apply_weight_only(m, plan, quantized=quantize_plan(m, plan, stats=stats))
    return sqnr(run(m, new)[0], run(q, new)[0])


@pytest.mark.parametrize(("algo", "gain"), [("gptq", 2.0), ("adaround", 1.5)])
def test_a_data_aware_algorithm_beats_rtn_at_the_model_output(algo, gain):
    """Measured on held-out rows: rtn 18.0 dB, gptq 20.9 dB, adaround 20.3 dB."""
    m = two_layer()
    cal = [{"x": correlated(256, 64, seed=i).astype(np.float32)} for i in range(4)]
    new = {"x": correlated(1024, 64, seed=9).astype(np.float32)}
    assert _db(m, algo, cal, new) > _db(m, "rtn", cal, new) + gain
