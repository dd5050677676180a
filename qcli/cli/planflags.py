"""`quantize --plan FILE`: the configuration a replay runs with. Options given on the command line (or set away
from their default) are compared with the plan's by the pipeline, which refuses a difference; options left out
are the plan's, so `qcli quantize model.onnx --plan plan.json` replays whatever flags the plan was saved with."""

from __future__ import annotations

from pathlib import Path

import typer

from qcli.core.config import DEFAULT, QuantConfig
from qcli.io import planfile
from qcli.schemes import replay

# CLI parameter -> configuration key, where the names differ (the others are the same)
KEYS = {
    "per_tensor": "per_channel",
    "weight_asymmetric": "weight_symmetric_int4",
    "act_order": "gptq_act_order",
    "timing_batch": "timing_batches",
    "min_macs": "min_macs_per_conversion",
    "min_act_sqnr": "min_activation_sqnr",
    "guard": "accuracy_guard",
}


def replay_config(ctx: typer.Context, asked: QuantConfig, plan: Path) -> QuantConfig:
    """The plan's configuration, with the options this command line asked for in its place."""
    saved = replay.config_of(planfile.read(plan)).to_dict()
    mine, default = asked.to_dict(), DEFAULT.to_dict()
    given = {KEYS.get(name, name) for name in ctx.params if _given(ctx.get_parameter_source(name))}
    merged = {k: (mine[k] if k in given or mine[k] != default.get(k) else v) for k, v in saved.items()}
    return replay.codec.config_from_dict(merged)


def _given(source) -> bool:
    """Set on the command line or from the environment (typer vendors click: compared by name)."""
    return getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT")
