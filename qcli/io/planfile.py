"""Saved plans (`quantize --save-plan FILE`, replayed by `quantize --plan FILE`): one JSON file with every
decision and range of a run and every value it derived from data or from the machine, tied to the model it was
made for (its fingerprint), the qcli version and the configuration.

    {"kind": "qcli-plan", "file_version": 1, "qcli_version", "made", "model": {"name", "fingerprint"},
     "config": QuantConfig.to_dict(), "cpu": the CPU that made it, "plan": core/codec.dump(plan),
     "state": what the scheme's rewrite needs beyond the plan (the handler's `record`)}

Arrays (channel maxima, quantized weight blocks) are stored as base64 .npy bytes, read back with pickling off.
A plan file is untrusted input like a model: JSON only, its size bounded, every key checked, and its content
under a sha256 it carries, so that a plan edited after it was saved is refused, not applied half-checked."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcli.core.errors import InputError
from qcli.io.model_io import write_text_atomic

KIND = "qcli-plan"
FILE_VERSION = 1
MAX_BYTES = 8 << 30  # no plan comes near: the largest holds a model's worth of 4-bit blocks


@dataclass(frozen=True)
class SavedPlan:
    qcli_version: str
    model: dict[str, str]  # name (for messages) and fingerprint (io/fingerprint.py)
    config: dict[str, Any]
    cpu: dict[str, Any]
    plan: dict[str, Any]
    state: dict[str, Any]
    made: str = ""  # when (UTC, ISO 8601)

    def to_json(self) -> str:
        body = asdict(self)
        return json.dumps({"kind": KIND, "file_version": FILE_VERSION, **body, "sha256": digest(body)}, indent=1) + "\n"


def save(path: Path, saved: SavedPlan) -> Path:
    if not saved.made:
        saved = SavedPlan(**{**asdict(saved), "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path.parent.mkdir(parents=True, exist_ok=True)  # as the output model's folder is
    write_text_atomic(path, saved.to_json())
    return path


def read(path: Path) -> SavedPlan:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a plan file (give the file --save-plan wrote)")
    if not path.is_file():
        raise InputError(f"plan file not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"{path} is {path.stat().st_size / 1e9:.1f} GB: too large to be a qcli plan")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path} as a qcli plan: not JSON ({e})") from e
    if not isinstance(d, dict) or d.get("kind") != KIND:
        raise InputError(f"{path} is not a qcli plan (save one with quantize --save-plan)")
    if d.get("file_version") != FILE_VERSION:
        raise InputError(
            f"{path} is a plan file of version {d.get('file_version')!r}; this qcli reads version {FILE_VERSION}"
        )
    fields = SavedPlan.__dataclass_fields__
    missing = [k for k in fields if k not in d and k != "made"]
    wrong = [k for k in ("model", "config", "cpu", "plan", "state") if k in d and not isinstance(d[k], dict)]
    if missing or wrong:
        raise InputError(f"{path} is a malformed qcli plan: {', '.join(missing + wrong)} missing or not a table")
    body = {k: d[k] for k in fields if k in d}
    if d.get("sha256") != digest(body):
        raise InputError(
            f"{path} was edited after it was saved (its sha256 does not match): a plan is applied exactly as "
            "measured; save it again with --save-plan"
        )
    return SavedPlan(**body)


def digest(body: dict) -> str:
    """sha256 of the plan's content, as JSON reads it back (tuples as lists, floats as their repr)."""
    text = json.dumps(json.loads(json.dumps(body)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def encode_array(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_array(s: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(base64.b64decode(s, validate=True)), allow_pickle=False)
    except (ValueError, TypeError, OSError) as e:
        raise InputError(f"the plan holds an array that cannot be read ({type(e).__name__}: {e})") from e
