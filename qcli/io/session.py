"""onnxruntime sessions as qcli opens them: CPU provider, quiet, no thread spinning, optional config entries.

A failure is blamed on its true cause: a model or data the user gave is an InputError (exit 2), a model
qcli generated is an InternalError (exit 3).
"""

from __future__ import annotations

import ctypes
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from qcli.core.errors import InputError, InternalError
from qcli.io import mapped


def session_options(threads: int = 0, config: Mapping[str, str] | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    # Fatal only: a failed run comes back as the exception qcli words, not also as a coloured log line.
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
    # Idle spinning threads of one session steal cores from another one running in the same process.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    return so


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _error(ours: bool, message: str) -> Exception:
    if ours:
        return InternalError(f"internal error: {message} (a bug in qcli; rerun with --debug and report it)")
    return InputError(message)


class Session:
    """An onnxruntime session over a model file; `ours` says whether qcli generated the model. close() (or a
    `with` block) frees its memory at once, for the next session to use."""

    def __init__(
        self,
        path: Path,
        threads: int = 0,
        config: Mapping[str, str] | None = None,
        ours: bool = False,
        label=None,
        limit: TimeLimit | None = None,
    ) -> None:
        self.path = Path(path)
        self.label = label or self.path.name
        self.ours = ours
        self.limit = limit
        release_memory()  # what earlier sessions and models freed, back to the system before this one loads
        self._copy: tempfile.TemporaryDirectory | None = None
        try:
            self.sess = ort.InferenceSession(
                str(self._loadable()), session_options(threads, config), providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            self._drop_copy()
            raise _error(ours, f"onnxruntime cannot load {self.label}: {_first_line(e)}") from e

    def _loadable(self) -> Path:
        """The file onnxruntime loads: a model with large inline weights goes through an external-data copy
        (mapped.py), which it maps instead of holding the file, the parsed model and the weights at once."""
        try:  # a file smaller than MIN_BYTES holds less inline: not parsed to count
            if self.path.stat().st_size < mapped.MIN_BYTES or mapped.inline_bytes(self.path) < mapped.MIN_BYTES:
                return self.path
            self._copy = tempfile.TemporaryDirectory(prefix="qcli-map-")
            return mapped.external_copy(self.path, Path(self._copy.name))
        except Exception:  # not a model file qcli can read: onnxruntime says why
            self._drop_copy()
            return self.path

    def _drop_copy(self) -> None:
        if self._copy is not None:
            self._copy.cleanup()
            self._copy = None

    def outputs(self) -> list[str]:
        return [o.name for o in self.sess.get_outputs()]

    def inputs(self) -> list[str]:
        return [i.name for i in self.sess.get_inputs()]

    def run(self, names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        options = ort.RunOptions() if self.limit is not None else None
        timer = self.limit.start(options) if self.limit is not None else None
        try:
            return self.sess.run(names, dict(feed), options)
        except Exception as e:
            if options is not None and options.terminate:
                raise InputError(self.limit.stopped(self.label)) from None
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
            raise _error(
                self.ours, f"onnxruntime failed to run {self.label} on inputs {shapes}: {_first_line(e)}"
            ) from e
        finally:
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self.sess = None
        self._drop_copy()
        release_memory()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TimeLimit:
    """At most `seconds` a run (a batch), for models whose running time the data decides (a Loop whose trip
    count or condition is computed): onnxruntime's terminate flag, set from a timer, stops the run, and the
    error names `why`."""

    seconds: float
    why: str

    def start(self, options: ort.RunOptions) -> threading.Timer:
        """A timer that sets `options`' terminate flag after `seconds` (cancel it when the run ends)."""
        timer = threading.Timer(self.seconds, lambda: setattr(options, "terminate", True))
        timer.start()
        return timer

    def stopped(self, label: str) -> str:
        return (
            f"{label}: one batch ran longer than {self.seconds:g} s and was stopped ({self.why}): "
            "check the data that sets its trip count, or calibrate on shorter inputs"
        )


class OpenSessions:
    """Sessions over model files kept open from one use to the next: each call opens those it names that are not
    open yet and first closes the others, so a model used again (the best plan so far, timed against one candidate
    after another) is not loaded again. Files named here must not change while open."""

    def __init__(self, theirs: frozenset[Path] = frozenset()) -> None:
        self.theirs = theirs  # the files the user gave: an error in one is theirs (exit 2), in the others ours
        self.open: dict[Path, Session] = {}
        self.enabled = True

    def __call__(self, *paths: Path) -> tuple[Session | Path, ...]:
        """Sessions over these files; once disabled, the paths themselves (the caller opens one at a time)."""
        if not self.enabled:
            return paths
        for path in [p for p in self.open if p not in paths]:
            self.open.pop(path).close()
        for path in paths:
            if path not in self.open:
                self.open[path] = Session(path, ours=path not in self.theirs)
        return tuple(self.open[p] for p in paths)

    def close(self, disable: bool = False) -> None:
        """Close every session (and with disable, open none from now on)."""
        while self.open:
            self.open.popitem()[1].close()
        self.enabled = self.enabled and not disable

    def __enter__(self) -> OpenSessions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def release_memory() -> None:
    """Hand freed heap memory back to the system. glibc keeps the blocks a closed session freed for reuse,
    so without this each session's weights count again on top of the last one's."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except Exception:  # not glibc (musl, macOS, Windows): nothing to do
        pass


@lru_cache(maxsize=64)
def _loads(ir_version: int, opset: int) -> bool:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    try:
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


def runtime_problem(ir_version: int, opset: int) -> str | None:
    """Why the installed onnxruntime cannot load a model of this IR version and default-domain opset (probed
    with a one-node model, so no weights are involved), or None."""
    if _loads(ir_version, opset):
        return None
    if not _loads(ir_version, min(opset, 13)):
        best = next((v for v in range(ir_version - 1, 2, -1) if _loads(v, min(opset, 13))), None)
        return (
            f"the model has IR version {ir_version}; the installed onnxruntime {ort.__version__} loads up to "
            f"IR version {best}: re-save the model with ir_version <= {best} (model.ir_version = {best}) "
            "or install a newer onnxruntime"
        )
    best = next((v for v in range(opset - 1, 6, -1) if _loads(ir_version, v)), None)
    return (
        f"the model uses opset {opset}; the installed onnxruntime {ort.__version__} supports up to opset {best}: "
        "export the model at an older opset or install a newer onnxruntime"
    )
