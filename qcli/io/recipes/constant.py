"""kind = "constant": an input that takes the same value for every sample (a sample rate, a threshold, an image
size a detector wants), `value` a number or a nested list, cast to the input's dtype and checked against its
static shape (a scalar fills the shape where the shape is all static)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.recipes.keys import Table
from qcli.io.recipes.recipe import KINDS, ReadsNoFile


@dataclass(frozen=True, eq=False)
class ConstantInput(ReadsNoFile):
    name: str
    value: np.ndarray
    kind: str = "constant"

    def read(self, path: Path | None, index: int) -> dict[str, np.ndarray]:
        return {self.name: self.value.copy()}

    def to_dict(self) -> dict:
        return {"kind": "constant", "value": self.value.tolist()}


@KINDS.register("constant")
def parse(name: str, values: dict, specs: dict[str, InputSpec], base: Path) -> ConstantInput:
    spec, t = specs[name], Table(f"[inputs.{name}]", values, {"value"})
    if not t.has("value"):
        raise InputError(f'recipe [inputs.{name}]: kind = "constant" needs value = ...')
    try:
        value = np.asarray(t.values["value"], spec.dtype)
    except (TypeError, ValueError) as e:
        raise t.error("value", f"is not a {spec.dtype} array ({e})") from None
    static = all(isinstance(d, int) and d > 0 for d in spec.shape)
    if value.ndim == 0 and static and spec.shape:
        value = np.full(spec.shape, value, spec.dtype)
    if spec.shape and value.ndim != len(spec.shape):
        raise t.error("value", f"has rank {value.ndim}; input {name!r} has shape {list(spec.shape)}")
    for got, want in zip(value.shape, spec.shape):
        if isinstance(want, int) and want > 0 and got != want:
            raise t.error("value", f"has shape {list(value.shape)}; input {name!r} has shape {list(spec.shape)}")
    return ConstantInput(name, value)
