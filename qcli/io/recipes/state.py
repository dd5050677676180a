"""kind = "state": an input fed from a named output of the previous step (an RNN's hidden state, a VAD's state),
zeros at the start of each file, so a streaming model calibrates on the states it meets in use rather than on
isolated frames.

    [inputs.state]
    kind = "state"
    from = "stateN"

The steps of a file are its samples in order (an audio file's frames, a text file's lines). The float model
carries the state (stream.py runs it from step to step), so every sample sees the state the unquantized model
would hand it: each sample stays a batch of its own, and the quantized model is measured on the same states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.recipes.keys import Table
from qcli.io.recipes.recipe import KINDS, ReadsNoFile


@dataclass(frozen=True, eq=False)
class StateInput(ReadsNoFile):
    name: str
    output: str  # the model output that holds the next step's value
    shape: tuple[int, ...]
    dtype: str
    kind: str = "state"

    def read(self, path: Path | None, index: int) -> dict[str, np.ndarray]:
        """The state at the start of a file (stream.py feeds the later steps)."""
        return {self.name: np.zeros(self.shape, self.dtype)}

    def to_dict(self) -> dict:
        return {"kind": "state", "from": self.output, "initial": "zeros", "shape": list(self.shape)}


@KINDS.register("state")
def parse(name: str, values: dict, specs: dict[str, InputSpec], base: Path) -> StateInput:
    spec, t = specs[name], Table(f"[inputs.{name}]", values, {"from"})
    output = t.str("from")
    if not output:
        raise InputError(f'recipe [inputs.{name}]: kind = "state" needs from = "OUTPUT" (the output fed back)')
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)  # a free (batch) axis: 1
    return StateInput(name, output, shape, spec.dtype.name)
