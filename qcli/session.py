"""onnxruntime sessions as qcli opens them: CPU provider, quiet, no thread spinning, optional config entries."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnxruntime as ort

from .errors import InputError


def session_options(threads: int = 0, config: Mapping[str, str] | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    # Idle spinning threads of one session steal cores from another one running in the same process.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    return so


def make_session(path: Path, threads: int = 0, config: Mapping[str, str] | None = None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), session_options(threads, config), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InputError(f"onnxruntime cannot load {path.name}: {str(e).splitlines()[0]}") from e
