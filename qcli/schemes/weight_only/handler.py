"""Weight-only (w4a16: int4 blocks; w8a16: int8 blocks): constant MatMul/Gemm weights and Gather tables
quantized block-wise along the reduction axis; all compute stays float.

    plan:   the weights to quantize; data-aware algorithms read their inputs' statistics    planner.py, stats.py
    steps:  accuracy target (weights one step wider) -> weights quantized once -> the form
            written (--format auto) and weight placement                                    steps/weight_only.py
    write:  blocked DequantizeLinear, or MatMulNBits / GatherBlockQuantized                 passes/blockwise.py
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from onnx import ModelProto

from qcli.core.config import Objective, Placement, QuantConfig, Scheme, WeightAlgo, WeightFormat
from qcli.core.errors import InputError
from qcli.core.plan import QuantPlan
from qcli.core.progress import Progress
from qcli.io.planfile import decode_array, encode_array
from qcli.passes.awq import awq_prepare
from qcli.passes.blockwise import apply_weight_only
from qcli.schemes.base import (
    Data,
    Inspected,
    Planned,
    SchemeHandler,
    Written,
    fidelity_after_fit,
    fidelity_only,
    final_inspection,
    split,
)
from qcli.schemes.weight_only import saved
from qcli.schemes.weight_only import stats as weight_stats
from qcli.schemes.weight_only.planner import BITS, plan_w4a16
from qcli.schemes.weight_only.steps import FormatStep, QuantizeWeights, WeightTargetStep
from qcli.schemes.weight_only.target import Quantized
from qcli.steps.base import Part, Step
from qcli.steps.target import AccuracyTarget
from qcli.weights import WeightOptions, reads_statistics

NBITS_LEVEL = "session.qdq_matmulnbits_accuracy_level"


@dataclass(frozen=True)
class WeightOnlyPlanned(Planned):
    weights: Quantized | None = None  # every plan's weights, each quantized once (with the statistics)
    awq: dict = field(default_factory=dict)  # awq: activation -> the per-channel scale moved into the graph


class WeightOnly(SchemeHandler):
    def __init__(self, scheme: Scheme, suffix: str, relief: str) -> None:
        self.scheme, self.suffix, self.relief = scheme, suffix, relief  # relief: what a weight raised becomes
        self.candidates_label = f"int{BITS[scheme]} weights"

    def opset(self, config: QuantConfig) -> tuple[int, str] | None:
        if config.weight_only.weight_format == WeightFormat.ORT:
            return None  # com.microsoft MatMulNBits / GatherBlockQuantized: no standard opset needed
        return 21, "block-wise DequantizeLinear"

    def plan(self, model: ModelProto, config: QuantConfig, data: Data, progress: Progress) -> WeightOnlyPlanned:
        """rtn needs no data; gptq, awq, adaround and --clip-search read statistics of each weight's input (X^T X, mean
        |x|) from one pass over the calibration files (a fifth held aside for fidelity without --eval); awq also
        rescales the graph (folded where exact, else an explicit Mul)."""
        plan, algo = plan_w4a16(model, config), config.weight_only.weight_algo
        aware = _data_aware(config)
        if not aware or (algo == WeightAlgo.RTN and data.calib is None):  # rtn's clipping search: unweighted
            if aware:
                plan.notes.append("--clip-search without --calib: each block's clipping chosen on its own error")
            return WeightOnlyPlanned(plan, None, fidelity_only(data), Quantized(None, WeightOptions.of(config)))
        if data.calib is None:
            raise InputError(f"--weight-algo {algo.value} needs calibration data: pass --calib DIR")
        items, held = split(data.calib, data.eval)
        advance = progress("weight statistics (X^T X per input)", len(items))
        stats = weight_stats.collect(model, plan, (data.calib.load(i) for i in items), advance)
        calibration: dict = {
            "method": algo.value + (" + clip search" if config.weight_only.clip_search else ""),
            "batches": len(items),
            "files": [p.name for p in items],
            "tensors": len(stats),
        }
        scales = {}
        if algo == WeightAlgo.AWQ:
            done = awq_prepare(model, plan, stats)
            stats, scales = done.stats, done.scales
            plan.notes += list(done.notes)
            calibration["awq"] = [x.to_dict() for x in done.layers]
        weights = Quantized(stats, WeightOptions.of(config))
        return WeightOnlyPlanned(plan, calibration, fidelity_after_fit(data, items, held), weights, scales)

    def steps(self, config: QuantConfig, planned: WeightOnlyPlanned) -> list[Step]:
        target = AccuracyTarget(config.min_sqnr, config.max_top1_drop)
        weights, batches, form = planned.weights, config.weight_only.timing_batches, config.weight_only.weight_format
        steps: list[Step] = []
        if target:
            steps.append(WeightTargetStep(weights, target, self.relief, form, batches))
        steps.append(QuantizeWeights(weights))
        if form == WeightFormat.AUTO:
            place = config.objective == Objective.LATENCY and config.placement == Placement.MEASURED
            steps.append(FormatStep(weights, config.min_sqnr, batches, place))
        return steps

    def without_data(self, config: QuantConfig) -> QuantConfig:
        """rtn without the clipping search: the algorithms that read statistics need data."""
        plain = replace(config.weight_only, weight_algo=WeightAlgo.RTN, clip_search=False)
        return replace(config, weight_only=plain) if _data_aware(config) else config

    def record(self, config: QuantConfig, planned: WeightOnlyPlanned) -> dict:
        """The data-aware algorithms' quantized weights and awq's scales (rtn's are made again from the model)."""
        if not _data_aware(config):
            return {}
        awq = {t: encode_array(s) for t, s in planned.awq.items()}
        return {"weights": saved.encode(planned.weights.cache)} | ({"awq": awq} if awq else {})

    def replay(
        self, model: ModelProto, config: QuantConfig, plan: QuantPlan, state: dict, data: Data
    ) -> WeightOnlyPlanned:
        awq = {t: decode_array(s) for t, s in state.get("awq", {}).items()}
        if awq:  # the graph edits awq made from the data, redone from its scales
            awq_prepare(model, plan, {}, chosen=awq)
        weights = Quantized(None, WeightOptions.of(config))
        weights.cache = saved.decode(state.get("weights", []))
        return WeightOnlyPlanned(plan, None, fidelity_only(data), weights, awq)

    def replay_steps(self, config: QuantConfig, planned: WeightOnlyPlanned) -> list[Step]:
        return [QuantizeWeights(planned.weights)]

    def rewrite(self, model: ModelProto, plan: QuantPlan, planned: WeightOnlyPlanned) -> Written:
        quantized = planned.weights.of(model, plan)
        errors = planned.weights.errors(plan)
        qmodel = apply_weight_only(model, plan, inplace=True, quantized=quantized)  # the float graph is done
        return Written(qmodel, part=Part({"weight_errors": errors}))

    def summary(self, config: dict, decisions: dict) -> str:
        sym = "symmetric" if config["weight_symmetric_int4"] else "asymmetric"
        form = decisions.get("weight_format", {}).get("value", config.get("weight_format", "qdq"))
        written = "MatMulNBits" if form == "ort" else "DequantizeLinear -> MatMul"
        return (
            f"{self.scheme.value.upper()} weight-only: int{BITS[self.scheme]} {sym}, blocks of "
            f"{config['block_size']} along K, written as {written} ({form})"
        )

    def inspect(self, model: ModelProto, config: QuantConfig) -> Inspected:
        return final_inspection(plan_w4a16(model, config))

    def data_warnings(self, config: QuantConfig, data: Data) -> list[str]:
        if data.calib is None or _data_aware(config):
            return []
        return [
            f"--calib is not used by {self.scheme.value} rtn; its files serve fidelity (and --format auto's timing)"
        ]

    def measured_notes(self, plan: QuantPlan, latency_ratio: float | None, ort_config: dict | None) -> list[str]:
        slower = latency_ratio is not None and latency_ratio >= 1.0
        qdq = plan.decisions.get("weight_format", {}).get("value", "qdq") == "qdq"
        if not (qdq and slower) or (ort_config or {}).get(NBITS_LEVEL):
            return []
        return [
            "onnxruntime runs DequantizeLinear(int4) -> MatMul as MatMulNBits with int8 compute by default "
            f"(accuracy level 4), which can be slower than float compute: try session config {NBITS_LEVEL}=0 "
            "(measure with --ort-config)"
        ]


def _data_aware(config: QuantConfig) -> bool:
    return reads_statistics(config.weight_only.weight_algo.value, WeightOptions.of(config))
