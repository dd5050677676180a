"""`qcli recipe` prints a starting recipe that loads as it is printed; raw data from the command line."""

from pathlib import Path

import onnx
import pytest
import tomllib
from typer.testing import CliRunner

from qcli.cli.app import app
from qcli.io.feeds import input_specs
from qcli.io.recipes import load_recipe
from tests.io.recipes.texts import SENTENCES, encoder, write_tokenizer

ROOT = Path(__file__).resolve().parents[2]
CNN = ROOT / "sample_models" / "cnn"


def test_the_starting_recipe_of_an_image_model_loads_as_printed(tmp_path):
    r = CliRunner().invoke(app, ["recipe", str(CNN / "model.onnx")])
    assert r.exit_code == 0, r.output
    doc = tomllib.loads(r.stdout)
    assert doc["inputs"]["input"] | {} == {
        "kind": "image",
        "layout": "NCHW",
        "resize": [32, 32],
        "color": "L",
        "mean": 0,
        "std": 255,
    }
    (tmp_path / "r.toml").write_text(r.stdout)
    load_recipe(tmp_path / "r.toml", input_specs(onnx.load(CNN / "model.onnx")))


def test_a_text_model_from_a_text_file_with_no_recipe(tmp_path):
    m = encoder(tmp_path / "enc")
    r = CliRunner().invoke(app, ["recipe", str(m)])
    assert 'kind = "text"' in r.stdout and "NOT found beside the model" in r.stdout
    write_tokenizer(tmp_path / "enc" / "tokenizer.json")
    r = CliRunner().invoke(app, ["recipe", str(m)])
    assert "found beside the model" in r.stdout and "NOT" not in r.stdout
    (tmp_path / "s.txt").write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(
        app, ["quantize", str(m), "--calib", str(tmp_path / "s.txt"), "-o", str(out), "--min-macs", "0"]
    )
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_raw_data_without_a_recipe_says_how_to_write_one(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    r = CliRunner().invoke(
        app, ["quantize", str(CNN / "model.onnx"), "--calib", str(tmp_path / "photos"), "-o", str(tmp_path / "q.onnx")]
    )
    assert r.exit_code == 2
    assert "qcli recipe" in r.output and "--recipe recipe.toml" in r.output


def test_a_corrupt_image_is_an_error_naming_it_or_skipped_and_counted(tmp_path):
    import json
    import shutil

    data = tmp_path / "calib"
    shutil.copytree(CNN / "images" / "calib", data)
    (data / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["quantize", str(CNN / "model.onnx"), "--calib", str(data), "--recipe", str(CNN / "recipe.toml")]
    args += ["--calib-limit", "16", "-o", str(tmp_path / "q.onnx")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "zz_broken.png: cannot read it as an image" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "q.onnx").exists()
    r = CliRunner().invoke(app, [*args, "--skip-bad-files"])
    assert r.exit_code == 0 and "recipe.toml, 1 file skipped" in r.output, r.output
    skipped = json.loads((tmp_path / "q.onnx.report.json").read_text())["recipe"]["skipped_files"]
    assert len(skipped) == 1 and "zz_broken.png" in skipped[0]


def test_a_file_of_another_kind_among_the_images_is_an_error_or_skipped_and_listed(tmp_path):
    import json
    import shutil

    data = tmp_path / "calib"
    shutil.copytree(CNN / "images" / "calib", data)
    (data / "README.txt").write_text("where these digits come from\n")
    args = ["quantize", str(CNN / "model.onnx"), "--calib", str(data), "--recipe", str(CNN / "recipe.toml")]
    args += ["--calib-limit", "16", "-o", str(tmp_path / "q.onnx")]
    r = CliRunner().invoke(app, args)
    says = " ".join(r.output.split())
    assert r.exit_code == 2 and "README.txt is not a kind the recipe reads" in says and "--skip-bad-files" in says
    r = CliRunner().invoke(app, [*args, "--skip-bad-files"])
    assert r.exit_code == 0 and "recipe.toml, 1 file skipped" in r.output, r.output
    skipped = json.loads((tmp_path / "q.onnx.report.json").read_text())["recipe"]["skipped_files"]
    assert skipped == [f"{data / 'README.txt'}: not a kind the recipe reads"]


def test_a_model_given_by_a_relative_path_finds_its_tokenizer_and_its_starting_recipe_works(tmp_path, monkeypatch):
    """From the model's parent folder: the tokenizer beside the model is read once relative to it, and the
    recipe `qcli recipe enc/model.onnx > r.toml` prints names it as seen from here."""
    m = encoder(tmp_path / "enc")
    write_tokenizer(tmp_path / "enc" / "tokenizer.json")
    (tmp_path / "s.txt").write_text("\n".join(SENTENCES) + "\n")
    monkeypatch.chdir(tmp_path)
    rel = str(m.relative_to(tmp_path))
    r = CliRunner().invoke(app, ["quantize", rel, "--calib", "s.txt", "-o", "q.onnx", "--min-macs", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["recipe", rel])
    assert 'tokenizer = "enc/tokenizer.json"' in r.stdout, r.stdout
    Path("r.toml").write_text(r.stdout)
    r = CliRunner().invoke(app, ["quantize", rel, "--calib", "s.txt", "--recipe", "r.toml", "-o", "q2.onnx"])
    assert r.exit_code == 0, r.output
    Path("elsewhere").mkdir()
    Path("elsewhere/r.toml").write_text(Path("r.toml").read_text())  # relative to the recipe's folder: not there
    r = CliRunner().invoke(app, ["quantize", rel, "--calib", "s.txt", "--recipe", "elsewhere/r.toml", "-o", "q3.onnx"])
    says = " ".join(r.output.split())
    assert r.exit_code == 2 and f"no such file: {tmp_path / 'elsewhere' / 'enc' / 'tokenizer.json'}" in says, says
    assert "(relative to the recipe's folder)" in says


@pytest.mark.parametrize("text", ['{"size": 32,', "[1, 2]", '{"do_center_crop": true, "crop_size": {"h": 1}}'])
def test_a_malformed_preprocessor_config_beside_the_model_is_the_users_error(tmp_path, text):
    import shutil

    shutil.copy(CNN / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "preprocessor_config.json").write_text(text)
    (tmp_path / "photos").mkdir()
    shutil.copy(next((CNN / "images" / "calib").rglob("*.png")), tmp_path / "photos" / "a.png")
    for args in (
        ["recipe", str(tmp_path / "model.onnx")],
        ["quantize", str(tmp_path / "model.onnx"), "--calib", str(tmp_path / "photos")],
    ):
        r = CliRunner().invoke(app, args)
        says = " ".join(r.output.split())
        assert r.exit_code == 2 and "preprocessor_config.json: cannot read it as an image processor's" in says, says
