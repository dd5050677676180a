"""What every layer shares: the configuration, the plan and its reasons, errors, qparams (the reference
quantize/dequantize math), per-op facts, graph helpers, registries and progress."""
