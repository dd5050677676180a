"""Saved plans, made and checked. `--save-plan FILE` records the final plan of a run with what its rewrite needs
beyond it (the scheme handler's `record`); `--plan FILE` refuses a plan made for another model (fingerprint),
another qcli version or another configuration, and one whose CPU-dependent choice would differ here, each with
the reason, before any work; then the handler's `replay` redoes the data-derived edits from the file, and no
calibration, search, timing or measured decision runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from qcli.core import codec
from qcli.core.config import QuantConfig, effective, option_fields
from qcli.core.errors import InputError
from qcli.core.hostcpu import CpuInfo
from qcli.core.plan import QuantPlan
from qcli.io import model_io
from qcli.io.outpaths import refuse_inputs, report_paths
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
    replayed = ("replayed the plan", "replayed from the saved plan")  # a replay's own notes are not the plan's
    plan = replace(plan, notes=[n for n in plan.notes if not any(r in n for r in replayed)])
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


def check_save_path(path: Path, model: Path, out: Path, reads: Mapping[str, Path | None]) -> None:
    """Where --save-plan writes: never over what the run reads (`reads`: the data, the recipe, a replayed
    plan; outpaths.refuse_inputs), the input, the output model or its reports, nor a folder; its folder must
    take a file. Checked before any work."""
    written = {"the output model": out} | {f"the report {p.name}": p for p in report_paths(out)}
    refuse_inputs(path, "--save-plan", {"the input model": model, **reads, **written})
    if path.is_dir():
        raise InputError(f"--save-plan {path} is a folder: give the plan a file name, e.g. {path / 'plan.json'}")
    model_io.check_writable(path)


def check(saved: SavedPlan, path: Path, model: str, fp: str, config: QuantConfig, cpu: CpuInfo) -> list[str]:
    """Refuse a plan this run cannot replay exactly (InputError, the reason); the notes for the report."""
    where = f"the plan {path.name}"
    if saved.model.get("fingerprint") != fp:
        theirs = str(saved.model.get("fingerprint", ""))[:12]
        raise InputError(
            f"{where} was made for another model (its {saved.model.get('name')!r} has fingerprint {theirs}; "
            f"{model} has {fp[:12]}: a different graph or weights): save a plan for this model with --save-plan"
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
    if rr.get("value"):
        why = "7-bit weights on a CPU that cannot saturate uint8 x int8 products (8-bit would be more accurate)"
    else:
        why = "8-bit weights, which may saturate uint8 x int8 products on this CPU (no VNNI)"
    raise InputError(
        f"{where} left the weights' range to qcli and was made on {made}; here it would apply {why} "
        f"({cpu.describe()}): save the plan on this kind of CPU, or with --reduce-range / --no-reduce-range to fix "
        "the choice for every CPU"
    )


def _comparable(config: QuantConfig) -> dict:
    """The configuration as JSON data, without where the overrides were read from (a path, not a setting)."""
    d = json.loads(json.dumps(config.to_dict()))
    if d.get("overrides"):
        d["overrides"].pop("source", None)
    return d


def _differences(saved: dict, mine: dict) -> list[str]:
    """The options that differ, by flag, among those the plan's scheme reads (all, where the scheme differs)."""
    if saved.get("scheme") != mine.get("scheme"):
        return [f"--scheme: plan {saved.get('scheme')!r}, this run {mine.get('scheme')!r}"]
    read = set(effective(codec.config_from_dict(saved), {}))
    by_name = {f.name: f for f in option_fields()}
    return [
        _difference(by_name.get(k), k, saved.get(k), mine.get(k)) for k in sorted(read) if saved.get(k) != mine.get(k)
    ]


def _difference(f, name: str, saved, mine) -> str:
    """One option told by its flag: a switch (one flag, no value: given where the value is not the default,
    whatever the field's own sense) as with or without it, any other by its values."""
    flag = f.metadata.get("flag", f"--{name.replace('_', '-')}") if f is not None else name
    if f is not None and isinstance(f.default, bool) and "/" not in flag:
        given = {True: "with it", False: "without it"}
        return f"{flag}: plan made {given[saved != f.default]}, this run {given[mine != f.default]}"
    return f"{flag}: plan {saved!r}, this run {mine!r}"
