"""Saved plans, made and checked. `--save-plan FILE` records the final plan of a run with what its rewrite needs
beyond it (the scheme handler's `record`); `--plan FILE` refuses a plan made for another model (fingerprint),
another qcli version or another configuration, and one whose CPU-dependent choice would differ here, each with
the reason, before any work; then the handler's `replay` redoes the data-derived edits from the file, and no
calibration, search, timing or measured decision runs."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from qcli.core import codec
from qcli.core.config import QuantConfig
from qcli.core.errors import InputError
from qcli.core.hostcpu import CpuInfo
from qcli.core.plan import QuantPlan
from qcli.io.planfile import SavedPlan
from qcli.schemes.base import Planned, SchemeHandler

VERSIONED = ("qcli", "onnx", "numpy")  # what the written bytes depend on; qcli's must match, the others noted


def versions() -> dict[str, str]:
    out = {}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def saved_plan(
    handler: SchemeHandler,
    config: QuantConfig,
    planned: Planned,
    plan: QuantPlan,
    model: str,
    fp: str,
    cpu: CpuInfo,
    more: dict | None = None,
) -> SavedPlan:
    """`more`: state of the run beyond the handler's (the If branches')."""
    state = handler.record(config, planned) | (more or {})
    mine = versions()
    cpu_record = cpu.to_dict() | {"u8s8_may_saturate": cpu.u8s8_may_saturate}
    return SavedPlan(
        mine["qcli"],
        {"name": model, "fingerprint": fp},
        _comparable(config),
        cpu_record,
        codec.dump(plan),
        state | {"versions": mine},
    )


def check(saved: SavedPlan, path: Path, model: str, fp: str, config: QuantConfig, cpu: CpuInfo) -> list[str]:
    """Refuse a plan this run cannot replay exactly (InputError, the reason); the notes for the report."""
    where = f"the plan {path.name}"
    if saved.model.get("fingerprint") != fp:
        raise InputError(
            f"{where} was made for another model ({saved.model.get('name')!r}, a different graph or weights "
            f"than {model}): save a plan for this model with --save-plan"
        )
    mine = versions()
    if saved.qcli_version != mine["qcli"]:
        raise InputError(
            f"{where} was made by qcli {saved.qcli_version}; this is qcli {mine['qcli']}, which may write "
            "another model from it: save the plan again with this version"
        )
    differ = _differences(saved.config, _comparable(config))
    if differ:
        raise InputError(
            f"{where} was made with other options ({'; '.join(differ[:4])}): replay it with the options it was "
            "saved with (flags you leave out are taken from the plan)"
        )
    _check_cpu(saved, where, cpu)
    notes = [
        f"replayed {where} (made {saved.made or 'at an unknown time'} on {saved.cpu.get('text', 'an unknown CPU')}): "
        "nothing was calibrated, searched or timed; its decisions and the figures they quote are from that run"
    ]
    theirs = saved.state.get("versions", {})
    notes += [
        f"the plan was made with {d} {theirs[d]}; this run has {mine[d]}"
        for d in VERSIONED[1:]
        if d in theirs and theirs[d] != mine[d]
    ]
    return notes


def config_of(saved: SavedPlan) -> QuantConfig:
    return codec.config_from_dict(saved.config)


def _check_cpu(saved: SavedPlan, where: str, cpu: CpuInfo) -> None:
    """The one choice that depends on the CPU: 7-bit weights where uint8 x int8 products may saturate. A plan
    that left it to qcli ("auto") is refused on a CPU that would choose otherwise."""
    rr = saved.plan.get("decisions", {}).get("reduce_range")
    if not rr or not str(rr.get("why", "")).startswith("auto") or rr.get("value") == cpu.u8s8_may_saturate:
        return
    made = saved.cpu.get("text", "another CPU")
    bits = "7-bit" if rr.get("value") else "8-bit"
    raise InputError(
        f"{where} chose {bits} weights for {made}; this CPU ({cpu.describe()}) needs the other choice (8-bit "
        "weights may saturate uint8 x int8 products without VNNI): save the plan on this kind of CPU, or with "
        "--reduce-range / --no-reduce-range to fix the choice for every CPU"
    )


def _comparable(config: QuantConfig) -> dict:
    """The configuration as JSON data, without where the overrides were read from (a path, not a setting)."""
    d = json.loads(json.dumps(config.to_dict()))
    if d.get("overrides"):
        d["overrides"].pop("source", None)
    return d


def _differences(saved: dict, mine: dict) -> list[str]:
    return [
        f"{k}: plan {saved.get(k)!r}, this run {mine.get(k)!r}"
        for k in sorted(set(saved) | set(mine))
        if saved.get(k) != mine.get(k)
    ]
