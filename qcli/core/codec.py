"""A QuantPlan and a QuantConfig to JSON-ready data and back, exactly: every value the rewrite reads (actions,
ranges, scales, zero points, weights, bias corrections) comes back equal, floats included (JSON writes the
shortest repr of a float64, which reads back to the same number). Used by saved plans (io/planfile.py);
`QuantPlan.to_dict` is the report's view and drops what only the rewrite needs."""

from __future__ import annotations

from typing import Any

from qcli.core.config import QuantConfig
from qcli.core.errors import InputError
from qcli.core.overrides import CalibMethod, NodeOverride, Overrides, Precision, TensorOverride
from qcli.core.plan import Action, ActivationQuant, NodeDecision, QuantPlan, Reason, WeightQuant, Why


def dump(plan: QuantPlan) -> dict[str, Any]:
    out = plan.to_dict()
    out["macs_per_conversion"] = dict(plan.macs_per_conversion)
    if plan.branches:
        out["branches"] = {k: dump(b) for k, b in plan.branches.items()}
    return out


def load(d: dict[str, Any]) -> QuantPlan:
    """The plan `dump` wrote. A malformed one (a hand-edited file) is an InputError naming what is wrong."""
    try:
        return QuantPlan(
            scheme=str(d["scheme"]),
            nodes=[_node(n) for n in d["nodes"]],
            activations={k: _activation(v) for k, v in d["activations"].items()},
            weights=[_weight(w) for w in d["weights"]],
            notes=[str(x) for x in d["notes"]],
            warnings=[str(x) for x in d["warnings"]],
            decisions=dict(d["decisions"]),
            overrides={str(k): str(v) for k, v in d["overrides"].items()},
            macs_per_conversion={str(k): float(v) for k, v in d.get("macs_per_conversion", {}).items()},
            bias_corrections={str(k): tuple(float(x) for x in v) for k, v in d["bias_corrections"].items()},
            branches={str(k): load(v) for k, v in d.get("branches", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"the plan is malformed ({type(e).__name__}: {e}); save it again with --save-plan") from e


def _node(n: dict) -> NodeDecision:
    r = n["reason"]
    reason = None
    if r is not None:
        details = {k: v for k, v in r.items() if k not in ("kind", "text")}
        reason = Reason(Why(r["kind"]), details)
    return NodeDecision(str(n["node"]), str(n["op_type"]), Action(n["action"]), reason)


def _activation(v: dict) -> ActivationQuant:
    v = dict(v)
    if v.get("range") is not None:
        v["range"] = tuple(float(x) for x in v["range"])
    return ActivationQuant(**v)


def _weight(w: dict) -> WeightQuant:
    w = dict(w)
    if w.get("scale_floor") is not None:
        w["scale_floor"] = tuple(float(x) for x in w["scale_floor"])
    return WeightQuant(**w)


def config_from_dict(d: dict[str, Any]) -> QuantConfig:
    """The configuration `QuantConfig.to_dict` wrote (a saved plan's), validated as the CLI's is."""
    flat = {k: v for k, v in d.items() if k != "version"}
    try:
        flat["exclude"] = tuple(flat.get("exclude") or ())
        flat["timing_batches"] = tuple(flat.get("timing_batches") or ())
        flat["overrides"] = _overrides(flat.get("overrides"))
        return QuantConfig.of(**flat)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"the plan's configuration is malformed ({type(e).__name__}: {e})") from e


def _overrides(d: dict | None) -> Overrides:
    if not d:
        return Overrides()
    tensors = tuple(
        TensorOverride(t["pattern"], CalibMethod(t["calibrator"]) if t.get("calibrator") else None, t.get("percentile"))
        for t in d.get("tensors", ())
    )
    nodes = tuple(NodeOverride(n["pattern"], Precision(n["precision"])) for n in d.get("nodes", ()))
    return Overrides(tensors, nodes, d.get("source"))
