"""W8A8 static QDQ: int8 weights, 8-bit activations with ranges from calibration data, bias int32.

plan:   prepare (equalize, smooth) -> calibrate -> plan (regions, cost rule)           calibrated.py
steps:  accuracy target | accuracy guard -> measured placement -> range refit -> bias correction   (below)
write:  Q/DQ pairs, folded activations, quantized weights and biases                    passes/qdq.py
"""

from __future__ import annotations

from dataclasses import replace

from onnx import ModelProto

from qcli.core.config import Objective, Placement, QuantConfig, Scheme
from qcli.core.plan import QuantPlan
from qcli.core.progress import Progress, no_progress
from qcli.io import model_io
from qcli.io.planfile import decode_array, encode_array
from qcli.passes.unscale import apply_unscaled
from qcli.schemes.base import Data, Inspected, SchemeHandler, Written, fidelity_only
from qcli.schemes.w8a8.calibrated import W8A8Planned, plan_w8a8
from qcli.schemes.w8a8.planner import W8A8Planner
from qcli.schemes.w8a8.prepare import prepare
from qcli.steps.base import Step
from qcli.steps.bias import BiasStep
from qcli.steps.guard import GuardStep
from qcli.steps.placement import PlacementStep
from qcli.steps.refit import RefitStep
from qcli.steps.target import AccuracyTarget, TargetStep
from qcli.steps.trials import QdqWriter
from qcli.steps.unscale import UnscaleStep


class W8A8(SchemeHandler):
    scheme = Scheme.W8A8
    suffix = ".int8.onnx"
    candidates_label = "int8 candidates"

    def opset(self, config: QuantConfig) -> tuple[int, str]:
        return (13, "per-channel Q/DQ") if config.int8.per_channel else (10, "Q/DQ")

    def plan(self, model: ModelProto, config: QuantConfig, data: Data, progress: Progress) -> W8A8Planned:
        return plan_w8a8(model, config, data, progress)

    def steps(self, config: QuantConfig, planned: W8A8Planned) -> list[Step]:
        target = AccuracyTarget(config.min_sqnr, config.max_top1_drop)
        replanner = planned.replanner
        # every candidate written as the model will be: idle channel scaling taken back (passes/unscale.py)
        write = QdqWriter(planned.scaling)
        steps: list[Step] = []
        if target:
            steps.append(TargetStep(replanner, target, write))
        elif config.w8a8.accuracy_guard:
            steps.append(GuardStep(replanner, planned.decide, planned.suspects, write))
        if config.objective == Objective.LATENCY and config.placement == Placement.MEASURED:
            on = planned.fid if target else planned.decide  # a target holds where it is measured
            steps.append(PlacementStep(replanner, config.macs_threshold, target or None, on, write))
        steps.append(RefitStep(replanner, planned.held, write))
        if config.w8a8.bias_correction:
            steps.append(BiasStep(planned.fid if target else planned.held or planned.decide, write))
        steps.append(UnscaleStep(planned.scaling))
        return steps

    def without_data(self, config: QuantConfig) -> QuantConfig:
        """Dynamic: int8 weights, activations quantized at run time (MatMul, Gemm, LSTM; convs stay float)."""
        return replace(config, scheme=Scheme.DYNAMIC)

    def record(self, config: QuantConfig, planned: W8A8Planned) -> dict:
        """The per-channel maxima channel scaling and SmoothQuant read from the calibration files."""
        return {"observed": {k: {t: encode_array(v) for t, v in m.items()} for k, m in planned.observed.items()}}

    def replay(self, model: ModelProto, config: QuantConfig, plan: QuantPlan, state: dict, data: Data) -> W8A8Planned:
        observed = {k: {t: decode_array(v) for t, v in m.items()} for k, m in state.get("observed", {}).items()}
        prepared = prepare(model, config, None, [], no_progress, observed)
        return W8A8Planned(plan, None, fidelity_only(data), scaling=tuple(prepared.scaling))

    def rewrite(self, model: ModelProto, plan: QuantPlan, planned: W8A8Planned) -> Written:
        qmodel, qnames = apply_unscaled(model, plan, planned.scaling)
        return Written(qmodel, qnames)

    def summary(self, config: dict, decisions: dict) -> str:
        acts = "int8 symmetric" if config["activation_symmetric"] else "uint8 asymmetric"
        wts = "int8 symmetric " + ("per-channel" if config["per_channel"] else "per-tensor")
        return f"W8A8 static QDQ: weights {wts}, activations {acts}, bias int32"

    def inspect(self, model: ModelProto, config: QuantConfig) -> Inspected:
        planner = W8A8Planner(model, config, model_io.float_tensors(model))
        candidates = [
            {"node": n.name, "op_type": n.op_type, "action": "int8 candidate"}
            for n in planner.nodes
            if n.name in planner.anchors
        ]
        candidates += [  # LSTMs on DynamicQuantizeLSTM (recurrent.py): decided without data
            {"node": d.node, "op_type": d.op_type, "action": d.action.value}
            for d, _ in planner.recurrent.values()
            if d.action.value != "float"
        ]
        note = (
            "w8a8: the candidates are final only after calibration (--calib): the cost model keeps float those "
            "too small to pay for their conversions, the accuracy guard those whose inputs quantize badly"
        )
        return Inspected(candidates, [d.to_dict() for d in planner.fixed.values()], [note])
