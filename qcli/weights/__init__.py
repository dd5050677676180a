"""Weight quantization algorithms, one file each, in a registry (rtn today; gptq/awq fit the same seam)."""

from . import rtn  # noqa: F401  (registers "rtn")
from .base import WEIGHT_ALGOS, WeightQuantizer
from .blocks import BlockWeight, quantize_rows

__all__ = ["WEIGHT_ALGOS", "WeightQuantizer", "BlockWeight", "quantize_rows"]
