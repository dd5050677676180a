"""kind = "audio" and kind = "state": frames against a reference framing written out, the state against the float
model run step by step in the test, decoders and resampling, and the end-to-end equality with .npz batches."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcli import QuantConfig, quantize
from qcli.core.errors import InputError
from qcli.io.feeds import input_specs
from qcli.io.recipes import open_source
from qcli.io.recipes.audio import decode

from .sounds import RECIPE, STATE, reference_frames, stateful_model, tone, write_sounds, write_wav


@pytest.fixture()
def vad(tmp_path):
    m = stateful_model(tmp_path / "m")
    (tmp_path / "vad.toml").write_text(RECIPE)
    return m


def source(m, data, recipe, **kw):
    return open_source(data, input_specs(onnx.load(m)), m, recipe, **kw)


def reference_states(m, frames):
    """The float model run over a file's frames in order, its stateN fed back: the state each frame sees."""
    s = ort.InferenceSession(str(m), providers=["CPUExecutionProvider"])
    state, out = np.zeros(STATE, np.float32), []
    for f in frames:
        out.append(state)
        state = s.run(["stateN"], {"input": f, "state": state, "sr": np.array(8000, np.int64)})[0]
    return out


def test_frames_and_states_equal_the_reference_written_out(vad, tmp_path):
    files = write_sounds(tmp_path / "d", 3)
    src = source(vad, tmp_path / "d", tmp_path / "vad.toml")
    frames = {f.name: reference_frames(f) for f in files}
    assert len(src.items) == sum(len(v) for v in frames.values())
    assert [i.name for i in src.items[:2]] == ["s00.wav:1", "s00.wav:2"]
    states = {f.name: reference_states(vad, frames[f.name]) for f in files}
    for item in src.items:
        feed = src.load(item)
        np.testing.assert_array_equal(feed["input"], frames[item.path.name][item.index])
        np.testing.assert_array_equal(feed["state"], states[item.path.name][item.index])
        assert feed["sr"].dtype == np.int64 and int(feed["sr"]) == 8000
    assert not np.any(src.load(src.items[0])["state"]) and np.any(src.load(src.items[5])["state"])
    # out of order (a held-aside or spread subset): the same state as when read in order
    later, first = src.items[7], src.items[len(frames["s00.wav"])]
    np.testing.assert_array_equal(src.load(later)["state"], states["s00.wav"][7])
    np.testing.assert_array_equal(src.load(first)["state"], np.zeros(STATE, np.float32))


def test_stereo_is_mixed_down_and_the_stdlib_reader_matches_soundfile(tmp_path, monkeypatch):
    pytest.importorskip("soundfile")
    x = tone(np.random.default_rng(3), 0.1, 8000, channels=2)
    path = write_wav(tmp_path / "st.wav", x, 8000)
    with_sf, rate = decode(path)
    np.testing.assert_array_equal(with_sf, (x.astype(np.float32) / 32768).mean(axis=1, dtype=np.float32))
    monkeypatch.setitem(sys.modules, "soundfile", None)  # the extra not installed: the standard library reads PCM
    without, rate2 = decode(path)
    np.testing.assert_array_equal(with_sf, without)
    assert rate == rate2 == 8000
    with pytest.raises(InputError, match=r"\.flac files needs pip install 'qcli\[audio\]'"):
        decode(tmp_path / "x.flac")


def test_flac_and_another_rate_are_read_resampled_and_noted(vad, tmp_path, monkeypatch):
    sf, soxr = pytest.importorskip("soundfile"), pytest.importorskip("soxr")
    x = tone(np.random.default_rng(4), 0.2, 16000)
    sf.write(tmp_path / "d" / "a.flac", x, 16000) if (tmp_path / "d").mkdir() is None else None
    write_wav(tmp_path / "d" / "b.wav", x, 16000)
    src = source(vad, tmp_path / "d", tmp_path / "vad.toml")
    want = soxr.resample(x[:, 0].astype(np.float32) / 32768, 16000, 8000)
    n = -(-(len(want) - 64) // 64) + 1
    assert len(src.items) == 2 * n  # the flac and the wav: the same samples
    got = np.concatenate([src.load(i)["input"][0, 32:] for i in src.items[:n]])[: len(want)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(src.load(src.items[3])["input"], src.load(src.items[n + 3])["input"])
    report = quantize(vad, QuantConfig.of(min_macs_per_conversion=0.0), calib=tmp_path / "d", out=tmp_path / "q.onnx",
                      recipe=tmp_path / "vad.toml", latency_runs=2).report  # fmt: skip
    assert report.recipe["resampled_files"] == 2
    monkeypatch.setitem(sys.modules, "soxr", None)
    from qcli.io.recipes import audio

    audio._load.cache_clear()
    with pytest.raises(InputError, match=r"16000 Hz and the recipe wants 8000 Hz: resampling needs pip install"):
        source(vad, tmp_path / "d", tmp_path / "vad.toml")


def test_quantize_from_wavs_equals_quantize_from_the_same_frames_as_npz(vad, tmp_path):
    calib, held = write_sounds(tmp_path / "c", 4), write_sounds(tmp_path / "e", 2, seed=9)
    for split, files in (("cn", calib), ("en", held)):
        (tmp_path / split).mkdir()
        for f in files:
            frames = reference_frames(f)
            for i, (x, s) in enumerate(zip(frames, reference_states(vad, frames))):
                np.savez(tmp_path / split / f"{f.stem}_{i:03d}.npz", input=x, state=s, sr=np.array(8000))
    cfg = QuantConfig.of(min_macs_per_conversion=0.0)
    run = dict(latency_runs=2)
    raw = quantize(vad, cfg, calib=tmp_path / "c", eval_dir=tmp_path / "e", out=tmp_path / "a" / "q.onnx",
                   recipe=tmp_path / "vad.toml", **run)  # fmt: skip
    arr = quantize(vad, cfg, calib=tmp_path / "cn", eval_dir=tmp_path / "en", out=tmp_path / "b" / "q.onnx", **run)
    assert raw.plan.activations and raw.plan.activations.keys() == arr.plan.activations.keys()
    for name, a in arr.plan.activations.items():
        assert (raw.plan.activations[name].scale, raw.plan.activations[name].zero_point) == (a.scale, a.zero_point)
    for r, a in zip(raw.report.fidelity, arr.report.fidelity):
        assert r.sqnr_db == pytest.approx(a.sqnr_db, abs=1e-9)
    rec = json.loads((tmp_path / "a" / "q.onnx.report.json").read_text())["recipe"]
    assert rec["inputs"]["input"] == {"kind": "audio", "sample_rate": 8000, "frame": 64, "hop": 64, "context": 32,
                                      "dtype": "float32"}  # fmt: skip
    assert rec["inputs"]["state"]["from"] == "stateN" and "resampled_files" not in rec


def test_audio_and_state_errors(vad, tmp_path):
    write_sounds(tmp_path / "d", 1)
    cases = {
        "sample_rate = 8000\nframe = 64\ncontext = 16": "plus context = 16 gives 80 samples; 'input' takes 96",
        "frame = 64": "sample_rate",
        "sample_rate = 8000\nframe = 64\ncontext = 32\nhopp = 3": "did you mean 'hop'",
    }
    rest = '[inputs.state]\nkind = "state"\nfrom = "stateN"\n[inputs.sr]\nkind = "constant"\nvalue = 8000\n'
    for body, message in cases.items():
        (tmp_path / "r.toml").write_text(f'[inputs.input]\nkind = "audio"\n{body}\n{rest}')
        with pytest.raises(InputError, match=message):
            source(vad, tmp_path / "d", tmp_path / "r.toml")
    (tmp_path / "r.toml").write_text(RECIPE.replace('from = "stateN"', 'from = "state_out"'))
    with pytest.raises(InputError, match=r'from = "state_out" is not an output of vad.onnx \(its outputs: output, '):
        source(vad, tmp_path / "d", tmp_path / "r.toml")
    (tmp_path / "r.toml").write_text(RECIPE.replace('from = "stateN"', 'from = "output"'))
    src = source(vad, tmp_path / "d", tmp_path / "r.toml")
    with pytest.raises(InputError, match=r"output 'output' has shape \[1, 1\]; the state input 'state' it feeds"):
        src.load(src.items[2])
    (tmp_path / "d" / "bad.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    with pytest.raises(InputError, match=r"bad\.wav: cannot read it as"):
        source(vad, tmp_path / "d", tmp_path / "vad.toml")
    src = source(vad, tmp_path / "d", tmp_path / "vad.toml", skip_bad=True)
    assert {i.path.name for i in src.items} == {"s00.wav"} and "bad.wav" in src.skipped[0]


def test_qcli_recipe_suggests_audio_and_state_and_loads_as_printed(vad, tmp_path):
    from qcli.io.recipes import load_recipe
    from qcli.report.inspection import starting_recipe

    text = starting_recipe(vad)
    assert text.index("[inputs.input]") < text.index("[inputs.state]") < text.index("[inputs.sr]")  # model order
    (tmp_path / "r.toml").write_text(text)
    r = load_recipe(tmp_path / "r.toml", input_specs(onnx.load(vad)))
    assert [t.kind for t in r.tables] == ["audio", "state", "constant"] and r.tables[1].output == "stateN"


def test_compare_from_wavs_feeds_both_models_the_float_models_state(vad, tmp_path):
    from typer.testing import CliRunner

    from qcli.cli.app import app

    write_sounds(tmp_path / "c", 4), write_sounds(tmp_path / "e", 2, seed=5)
    q = quantize(vad, QuantConfig.of(min_macs_per_conversion=0.0), calib=tmp_path / "c", out=tmp_path / "q.onnx",
                 recipe=tmp_path / "vad.toml", latency_runs=2)  # fmt: skip
    r = CliRunner().invoke(
        app,
        [
            "compare",
            str(vad),
            str(tmp_path / "q.onnx"),
            "--data",
            str(tmp_path / "e"),
            "--recipe",
            str(tmp_path / "vad.toml"),
            "--runs",
            "2",
            "--json",
        ],  # fmt: skip
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    frames = sum(len(reference_frames(f)) for f in sorted((tmp_path / "e").glob("*.wav")))
    assert report["recipe"]["inputs"]["state"]["from"] == "stateN" and f"({frames} batches)" in report["fidelity_data"]
    assert {o["name"] for o in report["outputs"]} == {"output", "stateN"} and q.plan.activations
