"""kind = "image": the issue's recipe as written, each key against an independent numpy/Pillow reference, and
the errors a person hits, each one clear line naming the key or the file."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from qcli.core.errors import InputError
from qcli.io.feeds import input_specs
from qcli.io.recipes import load_recipe, open_source

from .photos import picture, reference, write_pictures

ISSUE_RECIPE = """
[inputs.input]
kind = "image"
resize = 256
crop = 224
mean = [127, 127, 127]
std = [128, 128, 128]
layout = "NCHW"
color = "RGB"
"""


def model(tmp_path: Path, shape, name="input", elem=TensorProto.FLOAT) -> Path:
    x = helper.make_tensor_value_info(name, elem, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    cast = helper.make_node("Cast", [name], ["xf"], to=TensorProto.FLOAT)
    g = helper.make_graph([cast, helper.make_node("ReduceMean", ["xf"], ["y"], keepdims=0)], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    return path


def recipe_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.toml"
    p.write_text(text)
    return p


def feeds(tmp_path, shape, text, data, name="input", elem=TensorProto.FLOAT):
    m = model(tmp_path, shape, name, elem)
    src = open_source(data, input_specs(onnx.load(m)), m, recipe_file(tmp_path, text))
    return src, [src.load(i) for i in src.items]


def test_the_issues_recipe_works_as_written_and_matches_the_reference(tmp_path):
    files = write_pictures(tmp_path / "photos", 4, sizes=((300, 260), (260, 400), (512, 256)))
    Image.open(files[0]).convert("RGBA").save(tmp_path / "photos" / "img900.png")  # alpha: dropped
    Image.open(files[1]).convert("L").save(tmp_path / "photos" / "img901.png")  # grayscale: to RGB
    src, got = feeds(tmp_path, ["N", 3, 224, 224], ISSUE_RECIPE, tmp_path / "photos")
    paths = sorted((tmp_path / "photos").iterdir())
    assert [i.path for i in src.items] == paths
    for path, feed in zip(paths, got):
        want = reference(path, 256, 224, [127] * 3, [128] * 3)
        assert feed["input"].shape == (1, 3, 224, 224) and feed["input"].dtype == np.float32
        np.testing.assert_allclose(feed["input"], want, rtol=0, atol=1e-5)


def test_bgr_nhwc_and_scale(tmp_path):
    files = write_pictures(tmp_path / "p", 3, seed=2, sizes=((40, 30), (25, 50), (33, 33)))
    text = (
        '[inputs.x]\nkind = "image"\nresize = 20\ncrop = 16\ncolor = "BGR"\nlayout = "NHWC"\nmean = 10\nscale = 0.5\n'
    )
    _, got = feeds(tmp_path, [1, 16, 16, 3], text, tmp_path / "p", name="x")
    for path, feed in zip(files, got):
        np.testing.assert_allclose(
            feed["x"], reference(path, 20, 16, [10] * 3, [2] * 3, bgr=True, nhwc=True), atol=1e-5
        )


def test_grayscale_input_letterbox_and_uint8(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    picture(np.random.default_rng(1), 40, 20).save(folder / "a.bmp")
    text = '[inputs.x]\nkind = "image"\nletterbox = [32, 32]\npad = 0\n'
    _, (feed,) = feeds(tmp_path, [1, 1, 32, 32], text, folder, name="x", elem=TensorProto.UINT8)
    x = feed["x"]
    assert x.dtype == np.uint8 and x.shape == (1, 1, 32, 32)
    # 40x20 scaled by 0.8 to 32x16, centred: rows 8..23 hold the picture, the rest is the pad value
    assert (x[0, 0, :8] == 0).all() and (x[0, 0, 24:] == 0).all()
    want = np.asarray(Image.open(folder / "a.bmp").convert("L").resize((32, 16), Image.BILINEAR))
    np.testing.assert_array_equal(x[0, 0, 8:24], want)


def test_multiple_of_for_dynamic_size_inputs(tmp_path):
    write_pictures(tmp_path / "p", 2, sizes=((100, 70), (50, 90)))
    _, got = feeds(
        tmp_path,
        [1, 3, "H", "W"],
        '[inputs.x]\nkind = "image"\nresize = 64\nmultiple_of = 32\n',
        tmp_path / "p",
        name="x",
    )
    assert [f["x"].shape for f in got] == [(1, 3, 64, 96), (1, 3, 128, 64)]  # 91x64 -> 96x64; 64x115 -> 64x128


@pytest.mark.parametrize(
    "text, message",
    [
        ('[inputs.input]\nkind = "image"\nresise = 256\n', "unknown key 'resise' (did you mean 'resize'?)"),
        (
            '[inputs.input]\nkind = "image"\nresize = 256\ncrop = 200\n',
            "crop = 200: gives 200x200 images; input 'input' takes ['N', 3, 224, 224]",
        ),
        ('[inputs.input]\nkind = "image"\nresize = 256\n', "makes images of varying size: add crop = 224"),
        ('[inputs.image]\nkind = "image"\ncrop = 224\n', "[inputs.image] is not an input of the model"),
        ('[inputs.input]\nkind = "imag"\n', "unknown recipe kind 'imag'; did you mean 'image'?"),
        ('[inputs.input]\nkind = "image"\ncrop = 224\ncolor = "L"\n', "gives 1 channel(s); input 'input' has 3"),
        ('[inputs.input]\nkind = "image"\ncrop = "224"\n', "crop = '224': takes a side length"),
        ('[inputs.input]\nkind = "image"\ncrop = 224\nmean = [1, 2]\n', "mean = [1, 2]: takes 3 values"),
        ('[inputs.input]\nkind = "image"\ncrop = 224\nstd = 2\nscale = 0.5\n', "scale = 0.5: is an alternative to std"),
        ('[inputs.input]\nkind = "image"\ncrop = 224\nstd = [1, 0, 1]\n', "std = [1, 0, 1]: divides the pixels"),
        ('[inputs.input]\nkind = "image"\ncrop = 224\nscale = 0\n', "scale = 0: multiplies the pixels"),
        ("inputs = 3\n", "no [inputs.NAME] table"),
        ("[inputs.input\n", "is not valid TOML"),
    ],
)
def test_impossible_recipes_are_refused_before_any_file_is_read(tmp_path, text, message):
    m = model(tmp_path, ["N", 3, 224, 224])
    with pytest.raises(InputError) as e:
        load_recipe(recipe_file(tmp_path, text), input_specs(onnx.load(m)))
    assert message in str(e.value)


def test_bad_files_name_the_file(tmp_path):
    folder = tmp_path / "p"
    write_pictures(folder, 2)
    (folder / "img001.png").write_bytes(b"not a png")
    src, _ = None, None
    m = model(tmp_path, [1, 3, 16, 16])
    src = open_source(
        folder, input_specs(onnx.load(m)), m, recipe_file(tmp_path, '[inputs.input]\nkind = "image"\ncrop = 16\n')
    )
    src.load(src.items[0])
    with pytest.raises(InputError, match=r"img001.png: cannot read it as an image"):
        src.load(src.items[1])


def test_an_image_smaller_than_the_crop_names_both_sizes(tmp_path):
    write_pictures(tmp_path / "p", 1, sizes=((10, 12),))
    m = model(tmp_path, [1, 3, 16, 16])
    src = open_source(
        tmp_path / "p",
        input_specs(onnx.load(m)),
        m,
        recipe_file(tmp_path, '[inputs.input]\nkind = "image"\ncrop = 16\n'),
    )
    with pytest.raises(InputError, match=r"img000.png: .*12x10 after resizing, smaller than crop = \[16, 16\]"):
        src.load(src.items[0])


def test_folders_mixing_kinds_or_layouts_are_refused(tmp_path):
    m = model(tmp_path, [1, 3, 16, 16])
    r = recipe_file(tmp_path, '[inputs.input]\nkind = "image"\ncrop = 16\n')
    specs = input_specs(onnx.load(m))
    write_pictures(tmp_path / "a", 2)
    (tmp_path / "a" / "clip.wav").write_bytes(b"RIFF")
    with pytest.raises(InputError, match=r"clip.wav is not a kind the recipe reads"):
        open_source(tmp_path / "a", specs, m, r)
    write_pictures(tmp_path / "b" / "cats", 1)
    write_pictures(tmp_path / "b", 1)
    with pytest.raises(InputError, match=r"mixes files \(img000.png\) and folders \(cats\)"):
        open_source(tmp_path / "b", specs, m, r)
    (tmp_path / "c").mkdir()
    write_pictures(tmp_path / "c", 1)
    with pytest.raises(InputError, match=r"holds no .npy/.npz arrays; to read images, text or audio, pass a recipe"):
        open_source(tmp_path / "c", specs, m)


def test_a_preprocessor_config_beside_the_model_gives_the_recipe(tmp_path):
    """Hugging Face's image processor settings (0-1 mean/std after rescaling, PIL filter codes) become the
    recipe's 0-255 keys; the pixels equal the reference preprocessing with the same settings."""
    files = write_pictures(tmp_path / "photos", 3, sizes=((300, 260), (260, 400), (512, 256)))
    m = model(tmp_path, ["N", 3, 224, 224], name="pixel_values")
    config = {
        "do_resize": True, "size": {"shortest_edge": 256}, "resample": 2,
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    src = open_source(tmp_path / "photos", input_specs(onnx.load(m)), m)
    assert src.recipe.origin == "preprocessor_config.json beside the model"
    assert src.recipe.origins["mean"] == "preprocessor_config.json"
    mean, std = [v * 255 for v in config["image_mean"]], [v * 255 for v in config["image_std"]]
    for path, item in zip(files, src.items):
        np.testing.assert_allclose(src.load(item)["pixel_values"], reference(path, 256, 224, mean, std), atol=1e-5)


def test_a_16_bit_grayscale_png_reads_as_its_8_bit_version(tmp_path):
    """PIL's convert() clips 16-bit values at 255 (a photo came out near-white): scaled to 0-255 first."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    (tmp_path / "w").mkdir()
    (tmp_path / "n").mkdir()
    Image.fromarray(wide).save(tmp_path / "w" / "a.png")
    assert Image.open(tmp_path / "w" / "a.png").mode.startswith("I")
    Image.fromarray(np.round(wide / 257.0).astype(np.uint8)).save(tmp_path / "n" / "a.png")
    text = '[inputs.input]\nkind = "image"\nresize = [20, 24]\n'
    _, (w,) = feeds(tmp_path, [1, 1, 20, 24], text, tmp_path / "w")
    _, (n,) = feeds(tmp_path, [1, 1, 20, 24], text, tmp_path / "n")
    assert np.array_equal(w["input"], n["input"])
