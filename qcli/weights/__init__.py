"""Weight quantization algorithms, one file each, in a registry: rtn (with an optional clipping search), gptq,
awq (whose channel scales passes/awq.py moves into the graph first), adaround."""

from qcli.weights import adaround, awq, gptq, rtn  # noqa: F401  (register "adaround", "awq", "gptq", "rtn")
from qcli.weights.base import (
    DEFAULT_OPTIONS,
    WEIGHT_ALGOS,
    WeightOptions,
    WeightQuantizer,
    reads_statistics,
    requires_statistics,
)
from qcli.weights.blocks import BlockWeight, quantize_rows
from qcli.weights.errors import WeightError, relative_errors
from qcli.weights.stats import StatsAccumulator, WeightStats

__all__ = [
    "WEIGHT_ALGOS",
    "DEFAULT_OPTIONS",
    "reads_statistics",
    "requires_statistics",
    "WeightOptions",
    "WeightQuantizer",
    "BlockWeight",
    "quantize_rows",
    "WeightError",
    "relative_errors",
    "StatsAccumulator",
    "WeightStats",
]
