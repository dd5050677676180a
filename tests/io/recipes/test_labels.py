"""Labels: class folders mapped by labels.txt, integer names or the model's metadata; labels.npy beside .npy
batches; compare's top-1/top-5 against them for both models (checked against a direct computation) and the
--max-accuracy-drop gate; and quantizing from the raw pictures gives the plan the same pixels as .npy give."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from qcli import QuantConfig, compare, quantize
from qcli.cli.app import app
from qcli.core.errors import GateFailed, InputError
from qcli.io.feeds import input_specs
from qcli.io.recipes import open_source
from tests.models import cnn

from .photos import reference, write_pictures

NAMES = [f"class{k}" for k in range(10)]
RECIPE = '[inputs.x]\nkind = "image"\nresize = 20\ncrop = 16\nmean = [120, 110, 100]\nstd = [60, 60, 60]\n'


def pixels(path):
    return reference(path, 20, 16, [120, 110, 100], [60] * 3)


def logits(model, x):
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def labelled(tmp_path):
    """The float cnn; 30 pictures filed under the class the model predicts for them (so its top-1 is 100 %);
    a candidate whose classes are rolled by one (top-1 far lower)."""
    m = cnn()
    onnx.save(m, tmp_path / "m.onnx")
    fc = next(i for i in m.graph.initializer if i.name == "fc_w")
    fc.CopyFrom(onnx.numpy_helper.from_array(np.roll(onnx.numpy_helper.to_array(fc), 1, axis=0), "fc_w"))
    onnx.save(m, tmp_path / "rolled.onnx")
    val = tmp_path / "val"
    for path in write_pictures(tmp_path / "pool", 30, seed=5):
        cls = NAMES[int(logits(tmp_path / "m.onnx", pixels(path)).argmax())]
        (val / cls).mkdir(parents=True, exist_ok=True)
        shutil.move(path, val / cls / path.name)
    (val / "labels.txt").write_text("\n".join(NAMES) + "\n")
    (tmp_path / "r.toml").write_text(RECIPE)
    return tmp_path


def direct_accuracy(ref, cand, files_labels):
    hits = {"reference": [0, 0], "candidate": [0, 0]}
    for path, y in files_labels:
        for who, model in (("reference", ref), ("candidate", cand)):
            order = np.argsort(-logits(model, pixels(path))[0])
            hits[who][0] += int(order[0] == y)
            hits[who][1] += int(y in order[:5])
    return hits


def test_compare_reports_accuracy_against_class_folders_and_gates_on_the_drop(labelled):
    t = labelled
    files = [(p, NAMES.index(p.parent.name)) for p in sorted((t / "val").glob("*/*.png"))]
    want = direct_accuracy(t / "m.onnx", t / "rolled.onnx", files)
    r = compare(t / "m.onnx", t / "rolled.onnx", t / "val", recipe=t / "r.toml", latency_runs=2)
    acc = r.accuracy
    assert acc["samples"] == 30 and acc["output"] == "logits" and acc["labels"] == str(t / "val" / "labels.txt")
    for k, i in (("top1", 0), ("top5", 1)):
        assert acc[k]["reference"] == want["reference"][i] / 30 and acc[k]["candidate"] == want["candidate"][i] / 30
    assert acc["top1"]["reference"] == 1.0 and acc["top1"]["drop_pct"] == pytest.approx(
        100 - 100 * want["candidate"][0] / 30
    )
    assert acc["top1"]["drop_pct"] > 10
    with pytest.raises(GateFailed):
        compare(t / "m.onnx", t / "rolled.onnx", t / "val", recipe=t / "r.toml", latency_runs=2, max_accuracy_drop=1)
    runner = CliRunner()
    args = [
        "compare",
        str(t / "m.onnx"),
        str(t / "rolled.onnx"),
        "--data",
        str(t / "val"),
        "--recipe",
        str(t / "r.toml"),
    ]
    failed = runner.invoke(app, [*args, "--runs", "2", "--max-accuracy-drop", "1", "--json"])
    assert failed.exit_code == 1
    passed = runner.invoke(app, [*args, "--runs", "2", "--max-accuracy-drop", "100", "--json"])
    assert passed.exit_code == 0
    report = json.loads(passed.stdout)
    assert report["accuracy"]["top1"]["drop_pct"] == acc["top1"]["drop_pct"]
    assert report["gates"] == [
        {"gate": "max-accuracy-drop", "limit": 100.0, "value": acc["top1"]["drop_pct"], "passed": True}
    ]


def test_labels_npy_beside_npy_batches(labelled):
    t = labelled
    files = [(p, NAMES.index(p.parent.name)) for p in sorted((t / "val").glob("*/*.png"))]
    (t / "npy").mkdir()
    for i in range(0, 30, 8):
        np.save(t / "npy" / f"b{i:02d}.npy", np.concatenate([pixels(p) for p, _ in files[i : i + 8]]))
    np.save(t / "npy" / "labels.npy", np.array([y for _, y in files]))
    want = direct_accuracy(t / "m.onnx", t / "rolled.onnx", files)
    acc = compare(t / "m.onnx", t / "rolled.onnx", t / "npy", latency_runs=2).accuracy
    assert (
        acc["top1"]["candidate"] == want["candidate"][0] / 30 and acc["top5"]["candidate"] == want["candidate"][1] / 30
    )
    np.save(t / "npy" / "labels.npy", np.zeros(29, np.int64))
    with pytest.raises(InputError, match="29 labels for"):
        compare(t / "m.onnx", t / "rolled.onnx", t / "npy", latency_runs=2)


def test_class_names_from_integer_folders_metadata_or_an_error(labelled):
    t = labelled
    m, specs = t / "m.onnx", input_specs(onnx.load(t / "m.onnx"))
    (t / "val" / "labels.txt").write_text("\n".join(NAMES[:3]) + "\n")
    with pytest.raises(InputError, match=r"class folder\(s\) .* not among the 3 class names of .*labels.txt"):
        open_source(t / "val", specs, m, t / "r.toml")
    (t / "val" / "labels.txt").unlink()
    src = open_source(t / "val", specs, m, t / "r.toml", metadata={"names": repr(dict(enumerate(NAMES)))})
    assert [i.label for i in src.items] == [NAMES.index(i.path.parent.name) for i in src.items]
    assert "no labels.txt" in open_source(t / "val", specs, m, t / "r.toml").unlabelled
    unmapped = compare(m, t / "rolled.onnx", t / "val", recipe=t / "r.toml", latency_runs=2)
    assert unmapped.accuracy is None
    assert any(n.startswith("accuracy against labels not measured: class folders, but no") for n in unmapped.notes)
    for d in sorted((t / "val").iterdir()):
        d.rename(t / "val" / d.name.removeprefix("class"))
    src = open_source(t / "val", specs, m, t / "r.toml")
    assert src.labels().tolist() == [int(i.path.parent.name) for i in src.items]
    # class folders are interleaved: the held-aside fifth and --calib-limit span the classes
    classes = {i.path.parent.name for i in src.items}
    assert len(classes) >= 2 and {i.path.parent.name for i in src.items[: len(classes)]} == classes


def test_quantize_from_pictures_equals_quantize_from_the_reference_pixels(tmp_path):
    onnx.save(cnn(), tmp_path / "m.onnx")
    files = write_pictures(tmp_path / "photos", 20, seed=9)
    (tmp_path / "arr").mkdir()
    for p in files:
        np.save(tmp_path / "arr" / f"{p.stem}.npy", pixels(p))
    (tmp_path / "r.toml").write_text(RECIPE)
    cfg = QuantConfig()
    raw = quantize(
        tmp_path / "m.onnx",
        cfg,
        calib=tmp_path / "photos",
        out=tmp_path / "a" / "q.onnx",
        latency_runs=2,
        recipe=tmp_path / "r.toml",
    )
    arr = quantize(tmp_path / "m.onnx", cfg, calib=tmp_path / "arr", out=tmp_path / "b" / "q.onnx", latency_runs=2)
    assert arr.plan.activations and raw.plan.activations.keys() == arr.plan.activations.keys()
    for name, a in arr.plan.activations.items():
        got = raw.plan.activations[name]
        assert got.scale == pytest.approx(a.scale, rel=1e-5) and got.zero_point == a.zero_point
    assert raw.report.fidelity[0].sqnr_db == pytest.approx(arr.report.fidelity[0].sqnr_db, abs=0.05)
    assert raw.report.recipe["inputs"]["x"]["crop"] == [16, 16]


def test_quantize_with_labelled_eval_reports_accuracy_too(labelled):
    t = labelled
    write_pictures(t / "calib", 12, seed=3)
    r = quantize(
        t / "m.onnx",
        QuantConfig(),
        calib=t / "calib",
        eval_dir=t / "val",
        out=t / "q" / "q.onnx",
        latency_runs=2,
        recipe=t / "r.toml",
    )
    files = [(p, NAMES.index(p.parent.name)) for p in sorted((t / "val").glob("*/*.png"))]
    want = direct_accuracy(t / "m.onnx", t / "q" / "q.onnx", files)
    assert r.report.accuracy["top1"]["candidate"] == want["candidate"][0] / 30
    assert json.loads((t / "q" / "q.onnx.report.json").read_text())["accuracy"] == r.report.accuracy
