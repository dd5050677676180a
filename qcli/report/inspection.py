"""`qcli inspect MODEL`: what a model is and what qcli would quantize in it, before any data.

W4A16 plans need no data, so its plan is final. A W8A8 plan is final only after calibration (the cost model
needs activation shapes, the accuracy guard needs ranges): inspect lists the int8 candidates and the nodes
that stay float whatever the data says, each with its reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from onnx import TensorProto, helper

from qcli.core.config import QuantConfig, unmatched_excludes
from qcli.core.graph import name_nodes, subgraphs
from qcli.io import model_io
from qcli.io.feeds import input_specs
from qcli.passes.preprocess import preprocess
from qcli.schemes import handler_for


@dataclass
class Inspection:
    model: str
    ir_version: int
    opsets: dict[str, int]
    size_bytes: int
    inputs: list[dict]
    outputs: list[dict]
    ops: dict[str, int]
    scheme: str
    candidates_label: str = "candidates"  # what the scheme quantizes ("int8 candidates", "int4 weights")
    weights_bytes: int = 0  # float initializers and Constant-node tensors
    external_data_files: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)  # nodes that would be quantized (or may be, for w8a8)
    float_nodes: list[dict] = field(default_factory=list)  # nodes that stay float, with the reason
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(vars(self))

    def lines(self) -> list[str]:
        """Plain lines for a person (stderr)."""
        shape = lambda io: ", ".join(f"{x['name']} {x['type'].lower()} {x['shape']}" for x in io)  # noqa: E731
        share = f", weights {self.weights_bytes / max(self.size_bytes, 1):.0%} of it" if self.size_bytes else ""
        ext = f", external data in {', '.join(self.external_data_files)}" if self.external_data_files else ""
        out = [
            f"model: {self.model} ({self.size_bytes / 1e6:.2f} MB{share}{ext}, IR {self.ir_version}, "
            f"opsets {self.opsets})",
            f"inputs: {shape(self.inputs)}",
            f"outputs: {shape(self.outputs)}",
            "ops: " + ", ".join(f"{op} x{n}" for op, n in self.ops.items()),
        ]
        by_op = Counter(c["op_type"] for c in self.candidates)
        listed = ", ".join(f"{op} x{n}" for op, n in by_op.items()) or "none"
        out.append(f"{self.scheme} {self.candidates_label}: {listed}")
        reasons: dict[str, list[str]] = {}
        for d in self.float_nodes:
            reasons.setdefault(d["reason"]["text"], []).append(d["node"])
        for why, nodes in reasons.items():
            more = f" (+{len(nodes) - 8} more)" if len(nodes) > 8 else ""
            out.append(f"float: {why}: {', '.join(nodes[:8])}{more}")
        out += [f"note: {n}" for n in self.notes] + [f"warning: {w}" for w in self.warnings]
        return out


def _io(values) -> list[dict]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        out.append({"name": v.name, "type": TensorProto.DataType.Name(tt.elem_type), "shape": dims})
    return out


def _nbytes(t: TensorProto) -> int:
    """A tensor's size from its shape and type (its data may be external or typed fields)."""
    n = 1
    for d in t.dims:
        n *= d
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0


def inspect(path: Path, config: QuantConfig) -> Inspection:
    path = Path(path)
    model = model_io.load(path)
    inits = {i.name for i in model.graph.initializer}
    info = Inspection(
        model=str(path),
        ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        size_bytes=sum(p.stat().st_size for p in [path, *model_io.external_data_files(path)]),
        inputs=_io([v for v in model.graph.input if v.name not in inits]),
        outputs=_io(model.graph.output),
        ops=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        scheme=config.scheme.value,
    )
    input_specs(model)  # refuses inputs qcli cannot feed, as quantize would
    info.external_data_files = sorted(p.name for p in model_io.external_data_files(path))
    info.weights_bytes = sum(_nbytes(t) for t in model.graph.initializer) + sum(
        _nbytes(a.t) for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    )
    handler = handler_for(config.scheme)
    need = handler.opset(config)
    opset = model_io.onnx_opset(model)
    if need and opset < need[0]:
        info.notes.append(
            f"opset {opset} will be upgraded to {need[0]} for {config.scheme.value} (recorded in the report)"
        )
    name_nodes(model.graph)
    model, notes = preprocess(model, config.fold_batchnorm, inplace=True, keep=config.mentions)
    info.notes += notes
    nested = [n.name for n in model.graph.node if subgraphs(n)]
    if nested:
        info.notes.append(
            f"the branches and bodies of {', '.join(nested[:5])} are planned as models of their own when "
            "quantized (with the data that reaches them): their candidates are not listed here"
        )
    info.warnings += [
        f"--exclude {p!r} matches no node name, op type or glob" for p in unmatched_excludes(config, model.graph.node)
    ]
    seen = handler.inspect(model, config)
    info.candidates, info.float_nodes = seen.candidates, seen.float_nodes
    info.notes += seen.notes
    info.warnings += seen.warnings
    info.candidates_label = handler.candidates_label
    return info


def starting_recipe(model_path: Path) -> str:
    """`qcli recipe`: a starting data recipe for the model (its graph only; weights are not read)."""
    from qcli.io.recipes import starting_recipe as write

    model_path = Path(model_path)
    graph = model_io.load(model_path, weights=False)
    return write(model_path, input_specs(graph), input_specs(graph, outputs=True))
