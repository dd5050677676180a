"""Run calibration batches through one onnxruntime session and stream every watched tensor into observers."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto

from . import model_io
from .errors import InputError
from .observers import OBSERVERS, TensorStats
from .session import Session


def calibrate(
    model: ModelProto,
    watch: Iterable[str],
    batches: Iterable[dict[str, np.ndarray]],
    method: str = "minmax",
    on_batch: Callable[[], None] | None = None,
) -> dict[str, TensorStats]:
    """Expose `watch` as extra graph outputs, run every batch once, reduce each output at once."""
    observer_cls = OBSERVERS.get(method)
    watch = list(dict.fromkeys(watch))
    observers = {name: observer_cls() for name in watch}
    shapes: dict[str, tuple[int, ...]] = {}
    count = 0
    with tempfile.TemporaryDirectory(prefix="qcli-calib-") as tmp:
        path = model_io.save_with_outputs(model, dict.fromkeys(watch, TensorProto.FLOAT), Path(tmp), "calib.onnx")
        sess = Session(path, label="the model (calibration run)")
        for feed in batches:
            results = sess.run(watch, feed)
            for name, value in zip(watch, results):
                observers[name].update(value)
                shapes.setdefault(name, tuple(value.shape))
            del results
            count += 1
            if on_batch:
                on_batch()
    if count == 0:
        raise InputError("no calibration batches were read")
    return {name: TensorStats(*obs.range(), shapes.get(name, ()), count) for name, obs in observers.items()}
