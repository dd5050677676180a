"""Where a result came from, so it can be reproduced and audited: versions, the CPU, the command line and a
hash of the data files it was computed on."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

from qcli.core import hostcpu

_CHUNK = 1 << 20


def data_hash(files: list) -> str:
    """sha256 over each file's name and bytes, in order (streamed: no file is held in memory). Raw samples
    (recipes.RawItem: a file, or a line of one) count their file once."""
    h = hashlib.sha256()
    for path in dict.fromkeys(getattr(f, "path", f) for f in files):
        h.update(Path(path).name.encode() + b"\0")
        targets = sorted(Path(path).rglob("*.npy")) if Path(path).is_dir() else [Path(path)]
        for f in targets:
            with open(f, "rb") as fh:
                while block := fh.read(_CHUNK):
                    h.update(block)
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(data: dict[str, list], command: str | None = None) -> dict:
    cpu = hostcpu.host()
    return {
        "versions": {d: _version(d) for d in ("qcli", "onnx", "onnxruntime", "numpy")}
        | {"python": platform.python_version()},
        "cpu": cpu.to_dict() | {"flags": sorted(f for f in cpu.flags or () if f.startswith(("avx", "amx", "sse4")))},
        "command": command,
        "data": {k: {"files": _count(v), "sha256": data_hash(v)} for k, v in data.items() if v},
    }


def _count(items: list) -> int:
    return len(dict.fromkeys(getattr(i, "path", i) for i in items))
