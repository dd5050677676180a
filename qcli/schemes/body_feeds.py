"""Calibration samples for the bodies schemes/branches.py quantizes, from one run of the float model over the
calibration files with extra outputs:

- an `If` branch: the If's condition and the branch's outer tensors; each batch is a sample of the branch the
  condition takes;
- a `Loop` or `Scan` body: its own inputs at every iteration (the iteration number, the condition, the carried
  values, the scan slices), exposed as extra scan outputs of the body for that run only, and its outer tensors;
  a batch gives at most MAX_ITERATIONS samples, evenly spread over the iterations it ran. A body whose carried
  values change shape from one iteration to the next cannot be exposed that way (a scan output concatenates
  them): it gets no samples, and the reason.

Samples are written as .npy files, tmp/<body>/<k>/in<i>.npy, one batch in memory at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import GraphProto, NodeProto, helper

from qcli.calibration.calibrate import loop_limit
from qcli.core.errors import QcliError
from qcli.io import model_io
from qcli.io.session import Session

MAX_ITERATIONS = 8  # samples a batch gives a loop body


def collect(model, found, parts, calib, items, tmp: Path, progress, types, out) -> tuple[dict, dict[str, set]]:
    """Samples per body, by (node, attribute): their count, and the shapes each input was seen at. Records the
    If nodes' output types in `out.types` and, in `out.failed`, loop bodies that could not be exposed."""
    loops = [(n, a, g) for n, a, g in found if n.op_type != "If"]
    try:
        return _run(model, found, loops, parts, calib, items, tmp, progress, types, out)
    except QcliError as e:
        if not loops:
            raise
        why = f"its inputs at each iteration could not be collected ({str(e)[:160]})"
        out.failed.update({(n.name, a): why for n, a, _ in loops})
        rest = [x for x in found if x[0].op_type == "If"]
        return _run(model, rest, [], parts, calib, items, tmp, progress, types, out) if rest else ({}, {})


def _run(model, found, loops, parts, calib, items, tmp: Path, progress, types, out):
    ifs = [(n, a, g) for n, a, g in found if n.op_type == "If"]
    wanted = {n.input[0] for n, _, _ in ifs} | {o for n, _, _ in ifs for o in n.output}
    wanted |= {t for (n, a, _) in found for k, t in parts[(n.name, a)].inputs.items() if not _own(k, n, a, found)}
    exposed = {}
    for j, (n, a, g) in enumerate(loops):
        exposed[(n.name, a)] = _expose(n, g, j)
    extra = {t: types.get(t, 1) for t in wanted} | {o: t for names, _ in exposed.values() for o, t in names.items()}
    try:
        path = model_io.save_with_outputs(model, extra, tmp, "observe.onnx")
    finally:
        for _, undo in exposed.values():
            undo()
    counts: dict[tuple[str, str], int] = {}
    shapes: dict[str, set[tuple]] = {}
    names = list(extra)
    advance = progress("If branches and loop bodies: their inputs", len(items))
    with Session(path, ours=True, label="the model (its bodies' inputs)", limit=loop_limit(model)) as sess:
        for item in items:
            values = dict(zip(names, sess.run(names, calib.load(item))))
            for n, _, _ in ifs:
                out.types[n.name] = [helper.np_dtype_to_tensor_dtype(np.asarray(values[o]).dtype) for o in n.output]
            for n, a, g in found:
                for sample in _samples(n, a, g, values, exposed.get((n.name, a))):
                    k = counts.get((n.name, a), 0)
                    folder = tmp / slug(n.name, a) / f"{k:06d}"
                    folder.mkdir(parents=True)
                    for name, original in parts[(n.name, a)].inputs.items():
                        value = sample.get(name, values.get(original))
                        np.save(folder / f"{name}.npy", value, allow_pickle=False)
                        shapes.setdefault(original, set()).add(tuple(np.shape(value)))
                    counts[(n.name, a)] = k + 1
            advance()
    return counts, shapes


def _own(k: str, node: NodeProto, attr: str, found) -> bool:
    """Whether in<k> stands for one of the body's own inputs (not an outer tensor)."""
    g = next(g for n, a, g in found if n is node and a == attr)
    return int(k[2:]) < len(g.input)


def _samples(n: NodeProto, a: str, g: GraphProto, values: dict, exposed) -> list[dict]:
    """The samples one batch gives the body: {in<k>: value} for its own inputs (outer ones are read by name)."""
    if n.op_type == "If":
        taken = bool(np.asarray(values[n.input[0]]).reshape(-1)[0])
        return [{}] if taken == (a == "then_branch") else []
    names, _ = exposed
    per = [np.asarray(values[o]) for o in names]  # [iterations, ...] each
    steps = per[0].shape[0] if per and per[0].ndim else 0
    chosen = sorted({int(round(x)) for x in np.linspace(0, steps - 1, min(steps, MAX_ITERATIONS))}) if steps else []
    return [{f"in{k}": v[t] for k, v in enumerate(per)} for t in chosen]


def _expose(node: NodeProto, body: GraphProto, j: int) -> tuple[dict[str, int], callable]:
    """The body's inputs as extra scan outputs of `node`, for this run only: their outer names with their element
    types, and an undo."""
    kept_body, kept_outputs = GraphProto(), len(node.output)
    kept_body.CopyFrom(body)
    axes = {a.name: len(a.ints) for a in node.attribute if a.name in ("scan_output_axes", "scan_output_directions")}
    outer = {}
    for k, v in enumerate(body.input):
        inner, elem = f"qcli_body_{j}_{k}", v.type.tensor_type.elem_type or 1
        body.node.append(helper.make_node("Identity", [v.name], [inner], name=f"qcli_expose_{j}_{k}"))
        body.output.append(helper.make_tensor_value_info(inner, elem, None))
        outer[f"qcli_iter_{j}_{k}"] = elem
        node.output.append(f"qcli_iter_{j}_{k}")
    for a in node.attribute:  # Scan: one axis and direction per scan output, where they are given
        if a.name in axes:
            a.ints.extend([0] * len(body.input))

    def undo() -> None:
        body.CopyFrom(kept_body)
        del node.output[kept_outputs:]
        for a in node.attribute:
            if a.name in axes:
                del a.ints[axes[a.name] :]

    return outer, undo


def safe(name: str) -> str:
    """`name` as a file and tensor-name prefix: letters, digits and ._- only."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def slug(node: str, attr: str) -> str:
    return f"{safe(node)}.{attr.split('_')[0]}"
