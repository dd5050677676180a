"""Feeding state inputs from step to step: the float model run over a file's samples in order, each step's
state outputs handed to the next step's state inputs (zeros at the start of a file).

The states of the file being read are kept (a state per step: Silero VAD's is 1 KB, a minute of 16 kHz audio in
32 ms frames about 2 MB), so samples read in order cost one model run each, and a sample read out of order costs
the runs up to it, once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.recipes.recipe import Recipe
from qcli.io.session import Session


class StateFeeder:
    def __init__(self, model_path: Path, recipe: Recipe) -> None:
        self.recipe = recipe
        tables = [t for t in recipe.tables if t.kind == "state"]
        self.links = {t.name: t.output for t in tables}  # input <- output
        self.initial = {k: v for t in tables for k, v in t.read(None, 0).items()}  # zeros
        self.session = Session(model_path)
        outputs = self.session.outputs()
        for name, out in self.links.items():
            if out not in outputs:
                raise InputError(
                    f'recipe [inputs.{name}]: from = "{out}" is not an output of {Path(model_path).name} '
                    f"(its outputs: {', '.join(outputs)})"
                )
        self._path: Path | None = None
        self._states: list[dict[str, np.ndarray]] = []

    def feed(self, path: Path, index: int) -> dict[str, np.ndarray]:
        """Sample `index` of `path` with its state inputs as the float model leaves them after the samples
        before it."""
        if path != self._path:
            self._path, self._states = path, [self.initial]
        while len(self._states) <= index:
            step = len(self._states) - 1
            outs = self.session.run(list(self.links.values()), self.recipe.feed(path, step) | self._states[step])
            self._states.append({k: self._next(k, v, path, step) for k, v in zip(self.links, outs)})
        return self.recipe.feed(path, index) | self._states[index]

    def _next(self, name: str, value: np.ndarray, path: Path, step: int) -> np.ndarray:
        want = self.initial[name]
        if value.shape != want.shape:
            raise InputError(
                f"{path}: step {step + 1}: output {self.links[name]!r} has shape {list(value.shape)}; the state "
                f"input {name!r} it feeds takes {list(want.shape)}"
            )
        return value.astype(want.dtype, copy=False)

    def close(self) -> None:
        self.session.close()
