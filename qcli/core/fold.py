"""Ops absorbed into the QuantizeLinear that follows an int8 producer, so no node is left to run.

  Relu, Clip(0, hi)  the Q saturates at its zero point: the clamp happens for free (uint8 activations)
  Mul(x, a), a > 0   Q(x * a; s, z) == Q(x; s / a, z)            (exact; Div(x, c) is Mul(x, 1 / c))
  Add(x, b)          Q(x + b; s, z) ~= Q(x; s, z + round(b / s))  (the shift rounds: at most 1/2 step)

A chain producer -> op -> op ... folds as long as each tensor in it has a single reader. DequantizeLinear
keeps the final tensor's (s, z); the producer's QuantizeLinear gets the parameters computed back through
the chain, so the int8 values it writes are those of the final tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from qcli.core.graph import GraphIndex, attr

CLAMPS = {"Relu", "Clip"}
AFFINE = {"Mul", "Add", "Div"}


def scalar_operand(node: NodeProto, idx: GraphIndex) -> tuple[str, float] | None:
    """(data input, constant) for Mul/Add with one constant float scalar operand, else None.
    Div(x, c) is returned as a multiplication: (x, 1 / c)."""
    if node.op_type not in AFFINE or len(node.input) != 2:
        return None
    if node.op_type == "Div":
        so = _scalar(node.input[1], node.input[0], idx)
        return (so[0], 1.0 / so[1]) if so and so[1] != 0 else None
    for i in (0, 1):
        so = _scalar(node.input[i], node.input[1 - i], idx)
        if so:
            return so
    return None


def _scalar(c: str, x: str, idx: GraphIndex) -> tuple[str, float] | None:
    value = None if idx.is_const(x) else idx.scalar(c)
    return None if value is None else (x, value)


def data_input(node: NodeProto, idx: GraphIndex) -> str:
    so = scalar_operand(node, idx)
    return so[0] if so else node.input[0]


def chain(node: NodeProto, is_folded: Callable[[NodeProto], bool], idx: GraphIndex) -> list[NodeProto]:
    """The folded ops from the one next to the int8 producer up to `node` (inclusive); the producer is
    `idx.producer[data_input(chain[0])]`. The one walk over a folded chain."""
    out = []
    while is_folded(node):
        out.append(node)
        node = idx.producer[data_input(node, idx)]
    return out[::-1]


def clamp_low(node: NodeProto, idx: GraphIndex) -> float | None:
    """Lower bound of Relu / Clip, None when unknown."""
    if node.op_type == "Relu":
        return 0.0
    if len(node.input) >= 2 and node.input[1]:
        return float(idx.const(node.input[1]).reshape(())) if idx.is_const(node.input[1]) else None
    return attr(node, "min", None)


def foldable_op(node: NodeProto, idx: GraphIndex, after_clamp: bool) -> bool:
    """Whether this op can fold at all (its producer side is checked by the planner)."""
    if node.op_type in CLAMPS:
        return not after_clamp and clamp_low(node, idx) == 0.0
    so = scalar_operand(node, idx)
    if so is None:
        return False
    if node.op_type in ("Mul", "Div"):
        return so[1] > 0  # a positive scale keeps the order, so saturation stays at the same end
    return not after_clamp  # a shift after a clamp would move the clamp point


def q_params(
    chain: list[NodeProto], idx: GraphIndex, scale: float, zero_point: int, qmin: int, qmax: int
) -> tuple[float, int] | None:
    """Parameters for the producer's Q so that it writes Q(final tensor; scale, zero_point) directly.
    `chain` runs from the op next to the producer to the last folded op. None if the shift overflows."""
    s, shift = float(scale), 0.0
    for node in reversed(chain):
        so = scalar_operand(node, idx)
        if so is None:  # Relu / Clip: saturation, no change of parameters
            continue
        if node.op_type in ("Mul", "Div"):
            s /= so[1]
        else:
            shift += so[1] / s
    z = zero_point + int(np.rint(shift))
    if not qmin <= z <= qmax:
        return None
    return float(np.float32(s)), z
