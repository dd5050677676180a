"""Sounds written with the standard library's `wave` and a small stateful streaming model (a VAD's interface:
a frame with leading context, a state fed back, a sample rate), for the audio and state recipe tests; and the
independent reference framing the tests compare qcli's with."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FRAME, CONTEXT, STATE = 64, 32, (2, 1, 16)


def tone(rng: np.random.Generator, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """Bursts of a chirp over noise, as int16 [samples, channels]."""
    t = np.arange(int(seconds * rate)) / rate
    burst = (np.sin(2 * np.pi * (200 + 400 * t) * t) * (np.sin(2 * np.pi * 1.5 * t) > 0)).astype(np.float64)
    x = 0.5 * burst[:, None] + 0.05 * rng.standard_normal((len(t), channels))
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def write_sounds(folder: Path, n: int, rate: int = 8000, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    return [write_wav(folder / f"s{i:02d}.wav", tone(rng, 0.3 + 0.07 * i, rate), rate) for i in range(n)]


def reference_frames(path: Path) -> list[np.ndarray]:
    """The frames of a mono 16-bit .wav, written out: int16 / 32768, [i*FRAME - CONTEXT, (i+1)*FRAME) with
    zeros outside the file, the last frame padded."""
    with wave.open(str(path), "rb") as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
    n = max(1, -(-(len(x) - FRAME) // FRAME) + 1)
    padded = np.concatenate([np.zeros(CONTEXT), x, np.zeros(FRAME * (n + 1))])
    return [padded[i * FRAME : i * FRAME + CONTEXT + FRAME].astype(np.float32)[None] for i in range(n)]


def stateful_model(folder: Path) -> Path:
    """input [1, 96], state [2, 1, 16], sr [] -> output [1, 1] (a speech probability), stateN [2, 1, 16]:
    h = tanh(relu(x W1) W2 + state W3)."""
    rng = np.random.default_rng(1)
    inits = {
        "w1": (rng.standard_normal((CONTEXT + FRAME, 32)) * 0.3).astype(np.float32),
        "w2": (rng.standard_normal((32, 32)) * 0.3).astype(np.float32),
        "w3": (rng.standard_normal((32, 32)) * 0.3).astype(np.float32),
        "w4": (rng.standard_normal((32, 1)) * 0.5).astype(np.float32),
        "flat": np.array([1, 32], np.int64),
        "back": np.array(STATE, np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["b"]),
        helper.make_node("Reshape", ["state", "flat"], ["s"]),
        helper.make_node("MatMul", ["s", "w3"], ["c"]),
        helper.make_node("Add", ["b", "c"], ["d"]),
        helper.make_node("Tanh", ["d"], ["h"]),
        helper.make_node("Reshape", ["h", "back"], ["stateN"]),
        helper.make_node("MatMul", ["h", "w4"], ["e"]),
        helper.make_node("Sigmoid", ["e"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, CONTEXT + FRAME]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, list(STATE)),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, list(STATE)),
    ]
    g = helper.make_graph(nodes, "vad", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(m, folder / "vad.onnx")
    return folder / "vad.onnx"


RECIPE = f"""
[inputs.input]
kind = "audio"
sample_rate = 8000
frame = {FRAME}
context = {CONTEXT}

[inputs.state]
kind = "state"
from = "stateN"

[inputs.sr]
kind = "constant"
value = 8000
"""
