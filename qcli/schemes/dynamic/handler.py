"""Dynamic: int8 weights, activations quantized at run time (no calibration data; any data given serves
fidelity and an accuracy target).

    plan:   int8 weights where onnxruntime's dynamic kernels pay                            planner.py
    steps:  accuracy target (nodes back to float)                                           (below)
    write:  DynamicQuantizeLinear -> MatMulInteger / ConvInteger                            passes/dynamic.py
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import ModelProto

from qcli.core import hostcpu
from qcli.core.config import QuantConfig, Scheme
from qcli.core.hostcpu import CpuInfo
from qcli.core.plan import NO_PROMOTION, Promotion, QuantPlan, Reason
from qcli.core.progress import Progress
from qcli.passes.dynamic import apply_dynamic
from qcli.schemes.base import Data, Inspected, Planned, SchemeHandler, Written, fidelity_only, final_inspection
from qcli.schemes.dynamic.planner import plan_dynamic
from qcli.steps.base import Step
from qcli.steps.target import AccuracyTarget, TargetStep


@dataclass(frozen=True)
class Replanner:
    model: ModelProto
    config: QuantConfig
    cpu: CpuInfo

    def replan(self, why: dict[str, Reason], promotion: Promotion = NO_PROMOTION) -> QuantPlan:
        return plan_dynamic(self.model, self.config, why, self.cpu)


@dataclass(frozen=True)
class DynamicPlanned(Planned):
    replanner: Replanner | None = None


class Dynamic(SchemeHandler):
    scheme = Scheme.DYNAMIC
    suffix = ".dyn.onnx"
    candidates_label = "int8 candidates"

    def opset(self, config: QuantConfig) -> tuple[int, str]:
        return (13, "per-column DequantizeLinear") if config.int8.per_channel else (11, "DynamicQuantizeLinear")

    def plan(self, model: ModelProto, config: QuantConfig, data: Data, progress: Progress) -> DynamicPlanned:
        cpu = hostcpu.host()
        plan = plan_dynamic(model, config, cpu=cpu)
        return DynamicPlanned(plan, None, fidelity_only(data), Replanner(model, config, cpu))

    def steps(self, config: QuantConfig, planned: DynamicPlanned) -> list[Step]:
        target = AccuracyTarget(config.min_sqnr, config.max_top1_drop)
        return [TargetStep(planned.replanner, target, apply_dynamic)] if target else []

    def rewrite(self, model: ModelProto, plan: QuantPlan, planned: DynamicPlanned) -> Written:
        return Written(apply_dynamic(model, plan, inplace=True))

    def summary(self, config: dict, decisions: dict) -> str:
        wts = "per-channel" if config["per_channel"] else "per-tensor"
        return f"dynamic: int8 weights {wts}, activations uint8 quantized at run time"

    def inspect(self, model: ModelProto, config: QuantConfig) -> Inspected:
        return final_inspection(plan_dynamic(model, config))

    def data_warnings(self, config: QuantConfig, data: Data) -> list[str]:
        if data.calib is None:
            return []
        return [
            "--calib is not used by --scheme dynamic (ranges are computed at run time); its files only serve fidelity"
        ]
