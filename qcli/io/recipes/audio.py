"""kind = "audio": sound files -> frames of samples, one model input per frame, in time order.

A file is decoded to float samples in [-1, 1] (PCM .wav through the standard library; .wav of any encoding and
.flac through `soundfile` when the `audio` extra is installed), mixed down to mono (the channels' mean) and
resampled to `sample_rate` (with `soxr`, the same extra; a file at another rate is noted in the report). Frame i
holds the samples [i*hop - context, i*hop + frame): `context` samples carried over from before the frame (zeros
before the start of the file), as streaming models such as Silero VAD take them; the last frame is zero-padded,
so a file of L samples gives ceil((L - frame) / hop) + 1 frames (at least one). The frame fills the input's last
axis, every other axis 1 ([N] -> [1, N], [1, 1, N]).
"""

from __future__ import annotations

import functools
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.recipes.keys import Table
from qcli.io.recipes.recipe import KINDS, FillsOne

SUFFIXES = (".wav", ".flac")

KEYS = {"sample_rate", "frame", "hop", "context"}
EXTRA = "pip install 'qcli[audio]'"


@dataclass(frozen=True)
class AudioInput(FillsOne):
    name: str
    rank: int
    dtype: str
    sample_rate: int
    frame: int
    hop: int
    context: int
    kind: str = "audio"
    tallies: dict[str, set] = field(default_factory=dict, compare=False)  # "resampled_files" -> the files

    @property
    def suffixes(self) -> tuple[str, ...]:
        return SUFFIXES

    def count(self, path: Path) -> int:
        n = len(self._samples(path))
        return 1 if n <= self.frame else math.ceil((n - self.frame) / self.hop) + 1

    def read(self, path: Path | None, index: int) -> dict[str, np.ndarray]:
        return {self.name: window(self._samples(path), index, self)}

    def _samples(self, path: Path) -> np.ndarray:
        samples, rate = _load(path, path.stat().st_mtime_ns, self.sample_rate)
        if rate != self.sample_rate:
            self.tallies.setdefault("resampled_files", set()).add(f"{path.name} ({rate} Hz)")
        return samples

    def to_dict(self) -> dict:
        keys = ("sample_rate", "frame", "hop", "context", "dtype")
        return {"kind": "audio", **{k: getattr(self, k) for k in keys}}


def window(samples: np.ndarray, index: int, cfg: AudioInput) -> np.ndarray:
    """Frame `index` with its leading context, zeros outside the file, shaped for the input."""
    lo = index * cfg.hop - cfg.context
    out = np.zeros(cfg.context + cfg.frame, cfg.dtype)
    part = samples[max(lo, 0) : lo + len(out)]
    start = max(lo, 0) - lo
    out[start : start + len(part)] = part
    return out.reshape((1,) * (cfg.rank - 1) + (len(out),))


@functools.lru_cache(maxsize=4)
def _load(path: Path, stamp: int, rate: int) -> tuple[np.ndarray, int]:
    """(mono float32 samples at `rate`, the file's own rate); a few files kept, as frames are read in turn."""
    samples, own = decode(path)
    if own == rate:
        return samples, own
    try:
        import soxr
    except ModuleNotFoundError:
        raise InputError(f"{path} is at {own} Hz and the recipe wants {rate} Hz: resampling needs {EXTRA}") from None
    return soxr.resample(samples, own, rate).astype(np.float32), own


def decode(path: Path) -> tuple[np.ndarray, int]:
    """A sound file -> (mono float32 samples in [-1, 1], its sample rate)."""
    try:
        import soundfile
    except ModuleNotFoundError:
        soundfile = None
    if soundfile is None:
        if path.suffix.lower() != ".wav":
            raise InputError(f"{path}: reading {path.suffix} files needs {EXTRA}")
        data, rate = _read_wav(path)
    else:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (RuntimeError, TypeError, ValueError) as e:  # LibsndfileError is a RuntimeError
            raise InputError(f"{path}: cannot read it as audio ({e})") from e
    if not len(data):
        raise InputError(f"{path}: no audio samples")
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32)), int(rate)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """PCM .wav (8, 16, 24 or 32-bit integers) with the standard library, scaled as soundfile scales it."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise InputError(f"{path}: cannot read it as PCM .wav ({e}); other encodings need {EXTRA}") from e
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / (1 << 23)
    else:
        x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / np.float32(2 ** (8 * width - 1))
    return x[: len(x) - len(x) % channels].reshape(-1, channels), rate


@KINDS.register("audio")
def parse(name: str, values: dict, specs: dict[str, InputSpec], base: Path) -> AudioInput:
    spec, t = specs[name], Table(f"[inputs.{name}]", values, KEYS)
    if spec.dtype.kind != "f" or not 1 <= len(spec.shape) <= 3:
        raise InputError(
            f'recipe [inputs.{name}]: kind = "audio" fills a float input of rank 1 to 3 with samples; '
            f"{name!r} is {spec.dtype} {list(spec.shape)}"
        )
    if not t.has("sample_rate"):
        raise InputError(f"recipe [inputs.{name}]: the audio kind needs sample_rate = ... (the model's, in Hz)")
    last = spec.shape[-1] if isinstance(spec.shape[-1], int) and spec.shape[-1] > 0 else None
    context = t.int("context", 0, minimum=0)
    if not t.has("frame") and last is None:
        raise InputError(f"recipe [inputs.{name}]: input {name!r} has no fixed length: give frame = N samples")
    frame = t.int("frame", (last or 0) - context)
    if last is not None and frame + context != last:
        raise t.error("frame", f"plus context = {context} gives {frame + context} samples; {name!r} takes {last}")
    cfg = AudioInput(
        name, len(spec.shape), spec.dtype.name, t.int("sample_rate"), frame, t.int("hop", frame), context
    )  # fmt: skip
    return cfg
