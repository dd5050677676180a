"""Saved plans: `--save-plan` then `--plan` writes the same bytes, with nothing calibrated or timed; a plan that
cannot be replayed exactly (another model, qcli version, configuration or kind of CPU) is refused with the reason."""

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import simulate_cpu
from models import branchy, looped, write_batches
from passes.test_channel_scale import hswish_net

import qcli
from qcli.core import codec
from qcli.core.config import QuantConfig
from qcli.core.errors import InputError
from qcli.io import planfile
from qcli.io.fingerprint import fingerprint

SAMPLES = Path(__file__).parents[2] / "sample_models"
CNN, ATTENTION, HSWISH, BRANCHY, LOOPED = SAMPLES / "cnn", SAMPLES / "attention", "hswish", "branchy", "looped"

CASES = {
    "w8a8": (CNN, {}),
    "w8a8-equalize": (HSWISH, {"equalize": True}),  # channel scaling reads per-channel maxima from the data
    "w8a8-smoothquant": (ATTENTION, {"smooth_quant": 0.5}),
    "dynamic": (ATTENTION, {"scheme": "dynamic"}),
    "w4a16-gptq": (ATTENTION, {"scheme": "w4a16", "weight_algo": "gptq"}),
    "w4a16-awq": (ATTENTION, {"scheme": "w4a16", "weight_algo": "awq"}),  # scales moved into the graph
    "w4a16-adaround": (ATTENTION, {"scheme": "w4a16", "weight_algo": "adaround"}),  # learned roundings
    "w8a16-clip-search": (ATTENTION, {"scheme": "w8a16", "clip_search": True}),
    "w4a16-target": (ATTENTION, {"scheme": "w4a16", "min_sqnr": 40.0}),
    "w8a8-if-branches": (BRANCHY, {}),  # each branch planned on its own, one never taken (dynamic)
    "w8a8-loop-body": (LOOPED, {}),  # the body planned on its iterations
}


def _files(tmp_path, folder) -> tuple[Path, Path]:
    """The model and calibration data of a case."""
    if folder == HSWISH:  # HardSwish after every conv, outlier channels: what channel scaling is for
        onnx.save(hswish_net(), tmp_path / "hswish.onnx")
        write_batches(tmp_path / "c", [(4, 3, 12, 12)] * 6, seed=1)
        return tmp_path / "hswish.onnx", tmp_path / "c"
    if folder == BRANCHY:  # an If with a convnet in each branch; the data takes only one
        onnx.save(branchy(), tmp_path / "branchy.onnx")
        write_batches(tmp_path / "b", [(2, 3, 8, 8)] * 6, seed=1)
        return tmp_path / "branchy.onnx", tmp_path / "b"
    if folder == LOOPED:
        onnx.save(looped(), tmp_path / "looped.onnx")
        write_batches(tmp_path / "l", [(2, 3, 12, 12)] * 6, seed=1)
        return tmp_path / "looped.onnx", tmp_path / "l"
    return folder / "model.onnx", folder / ("calib" if folder == CNN else "eval")


def _save(tmp_path, folder, options, name="a.onnx"):
    config = QuantConfig.of(**options)
    model, calib = _files(tmp_path, folder)
    plan = tmp_path / "plan.json"
    qcli.quantize(model, config, calib, tmp_path / name, latency_runs=2, save_plan=plan)
    return config, plan


@pytest.mark.parametrize("case", CASES)
def test_a_replayed_plan_writes_the_same_bytes_without_data(tmp_path, case, monkeypatch):
    folder, options = CASES[case]
    config, plan = _save(tmp_path, folder, options)
    saved = planfile.read(plan)
    if case == "w8a8-equalize":  # the data-derived edit the replay must redo from the file
        assert saved.state["observed"]["channels"]
    if case == "w8a8-smoothquant":
        assert saved.state["observed"]["smooth"]
    if case in ("w4a16-gptq", "w4a16-awq", "w8a16-clip-search"):
        assert saved.state["weights"]
    if case == "w4a16-awq":
        assert saved.state["awq"]
    if case == "w8a8-if-branches":
        assert len(saved.plan["branches"]) == 2 and saved.state["types"]

    import qcli.calibration.calibrate as calibrate
    import qcli.schemes.weight_only.stats as stats

    def no_data(*a, **k):
        raise AssertionError("a replay read calibration data")

    monkeypatch.setattr(calibrate, "observe", no_data)
    monkeypatch.setattr(stats, "collect", no_data)
    model, _ = _files(tmp_path, folder)
    result = qcli.quantize(model, config, None, tmp_path / "b.onnx", latency_runs=2, plan=plan)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert any(n.startswith("replayed the plan plan.json") for n in result.report.notes)


def test_the_plan_codec_round_trips_every_field(tmp_path):
    _, plan = _save(tmp_path, CNN, {})
    d = planfile.read(plan).plan
    back = codec.dump(codec.load(d))
    assert json.loads(json.dumps(back)) == d
    assert d["activations"] and d["weights"] and d["bias_corrections"], "the round trip must cover these"


def test_a_plan_for_another_model_version_options_or_cpu_is_refused(tmp_path, monkeypatch):
    config, plan = _save(tmp_path, CNN, {})
    model = onnx.load(CNN / "model.onnx")
    w = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(InputError, match="made for another model"):
        qcli.quantize(tmp_path / "other.onnx", config, None, tmp_path / "b.onnx", plan=plan)

    with pytest.raises(InputError, match=r"other options \(.*scheme: plan 'w8a8', this run 'dynamic'"):
        qcli.quantize(CNN / "model.onnx", QuantConfig.of(scheme="dynamic"), None, tmp_path / "b.onnx", plan=plan)
    for option, value, flag in (
        ("per_channel", False, "--per-tensor"),
        ("activation_symmetric", True, "--activation-symmetric"),
    ):
        other = QuantConfig.of(**{option: value})  # the plan was saved with the defaults
        said = rf"other options \({flag}: plan made without it, this run with it\)"  # a switch's sense, either way
        with pytest.raises(InputError, match=said):
            qcli.quantize(CNN / "model.onnx", other, None, tmp_path / "b.onnx", plan=plan)

    d = json.loads(plan.read_text())
    d["qcli_version"] = "0.0.1"
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_signed(d)))
    with pytest.raises(InputError, match="made by qcli 0.0.1"):
        qcli.quantize(CNN / "model.onnx", config, None, tmp_path / "b.onnx", plan=old)
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("fixed", [False, True])
def test_a_plan_replayed_on_a_cpu_that_would_choose_other_weights_is_refused(tmp_path, monkeypatch, fixed):
    simulate_cpu(monkeypatch, tmp_path, "vnni")
    config, plan = _save(tmp_path, CNN, {"reduce_range": False} if fixed else {})
    simulate_cpu(monkeypatch, tmp_path, "avx2")
    if not fixed:
        with pytest.raises(InputError, match="here it would apply 8-bit weights, which may saturate"):
            qcli.quantize(CNN / "model.onnx", config, None, tmp_path / "b.onnx", plan=plan)
        return
    qcli.quantize(CNN / "model.onnx", config, None, tmp_path / "b.onnx", plan=plan)  # fixed by a flag: replayed
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def _signed(d: dict) -> dict:
    """A hand-edited plan given the checksum of its new content (a plan edited but not re-signed is refused)."""
    d["sha256"] = planfile.digest({k: d[k] for k in planfile.SavedPlan.__dataclass_fields__ if k in d})
    return d


def test_a_plan_edited_after_it_was_saved_is_refused(tmp_path):
    config, plan = _save(tmp_path, CNN, {})
    d = json.loads(plan.read_text())
    d["plan"]["activations"][next(iter(d["plan"]["activations"]))]["scale"] = 1e308
    plan.write_text(json.dumps(d))
    with pytest.raises(InputError, match="edited after it was saved"):
        qcli.quantize(CNN / "model.onnx", config, None, tmp_path / "b.onnx", plan=plan)
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("where", ["model", "output", "report", "folder"])
def test_save_plan_never_writes_over_the_model_its_output_or_reports(tmp_path, where):
    shutil.copy(CNN / "model.onnx", tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    out = tmp_path / "q.onnx"
    target = {"model": tmp_path / "m.onnx", "output": out, "report": tmp_path / "q.onnx.report.json"}.get(
        where, tmp_path
    )
    with pytest.raises(InputError, match="--save-plan"):
        qcli.quantize(tmp_path / "m.onnx", QuantConfig(), CNN / "calib", out, save_plan=target)
    assert (tmp_path / "m.onnx").read_bytes() == before and not out.exists()


def test_save_plan_makes_its_folder(tmp_path):
    plan = tmp_path / "new" / "dir" / "plan.json"
    qcli.quantize(CNN / "model.onnx", QuantConfig(), CNN / "calib", tmp_path / "q.onnx", latency_runs=1, save_plan=plan)
    assert planfile.read(plan).plan["nodes"]


def _object_array() -> str:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not JSON"),
        ('{"kind": "something else"}', "is not a qcli plan"),
        ('{"kind": "qcli-plan", "file_version": 99}', "version 99"),
        ('{"kind": "qcli-plan", "file_version": 1, "plan": []}', "malformed"),
    ],
)
def test_a_malformed_plan_file_is_an_input_error(tmp_path, text, message):
    f = tmp_path / "p.json"
    f.write_text(text)
    with pytest.raises(InputError, match=message):
        planfile.read(f)


def test_a_pickled_array_in_a_plan_is_refused_not_loaded(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        planfile.decode_array(_object_array())
    _, plan = _save(tmp_path, HSWISH, {"equalize": True})
    d = json.loads(plan.read_text())
    kind = next(iter(d["state"]["observed"]))
    tensor = next(iter(d["state"]["observed"][kind]))
    d["state"]["observed"][kind][tensor] = _object_array()
    plan.write_text(json.dumps(_signed(d)))
    config = QuantConfig.of(equalize=True)
    with pytest.raises(InputError, match="cannot be read"):
        qcli.quantize(tmp_path / "hswish.onnx", config, None, tmp_path / "b.onnx", plan=plan)


def test_the_fingerprint_is_what_the_model_computes_not_how_it_is_stored(tmp_path):
    model = onnx.load(CNN / "model.onnx")
    fp = fingerprint(model)
    model.producer_name, model.doc_string = "someone else", "notes"
    assert fingerprint(model) == fp
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0, location="ext.data")
    assert fingerprint(onnx.load(tmp_path / "ext.onnx")) == fp
    model.graph.node[0].name += "x"
    assert fingerprint(model) != fp


def test_dry_run_cannot_save_a_plan(tmp_path):
    with pytest.raises(InputError, match="--dry-run writes nothing"):
        qcli.quantize(CNN / "model.onnx", QuantConfig(), CNN / "calib", dry_run=True, save_plan=tmp_path / "p.json")
