import pytest

from qcli.config import QuantConfig
from qcli.errors import InputError
from qcli.overrides import CalibMethod, Overrides, TensorOverride, load


def _write(tmp_path, text):
    p = tmp_path / "overrides.toml"
    p.write_text(text)
    return p


def test_load_reads_entries_in_file_order_and_first_match_wins(tmp_path):
    o = load(
        _write(
            tmp_path,
            '[tensors."/enc/*/LayerNorm_out"]\ncalibrator = "percentile"\npercentile = 99.9\n'
            '[tensors."/enc/*"]\ncalibrator = "mse"\n'
            '[tensors."logits"]\npercentile = 99.5\n',
        )
    )
    assert [t.pattern for t in o.tensors] == ["/enc/*/LayerNorm_out", "/enc/*", "logits"]
    assert o.for_tensor("/enc/0/LayerNorm_out") == TensorOverride("/enc/*/LayerNorm_out", CalibMethod.PERCENTILE, 99.9)
    assert o.for_tensor("/enc/0/Add_out").calibrator == CalibMethod.MSE
    # a percentile alone means the percentile method
    assert o.for_tensor("logits") == TensorOverride("logits", CalibMethod.PERCENTILE, 99.5)
    assert o.for_tensor("other") is None
    assert o.unmatched(["logits", "/enc/1/x"]) == ["/enc/*/LayerNorm_out"]


def test_config_calib_for_uses_the_override_or_the_global_method():
    o = Overrides((TensorOverride("a*", CalibMethod.ENTROPY), TensorOverride("b", CalibMethod.PERCENTILE, 99.0)))
    c = QuantConfig(calibrator="mse", percentile=99.9, overrides=o)
    assert c.calib_for("abc") == (CalibMethod.ENTROPY, 99.9)
    assert c.calib_for("b") == (CalibMethod.PERCENTILE, 99.0)
    assert c.calib_for("z") == (CalibMethod.MSE, 99.9)
    assert c.to_dict()["overrides"]["tensors"][1] == {"pattern": "b", "calibrator": "percentile", "percentile": 99.0}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[tensors.x]\ncalibrator = 'kl'\n", "unknown calibrator 'kl'"),
        ("[tensors.x]\npercentile = 40\n", "above 50"),
        ("[tensors.x]\npercentile = 'high'\n", "must be a number"),
        ("[tensors.x]\ncalibrator = 'mse'\npercentile = 99.0\n", "only applies to calibrator"),
        ("[tensors.x]\nmethod = 'mse'\n", "unknown key"),
        ("[tensors.x]\n", "sets nothing"),
        ("[nodes.x]\nprecision = 'float'\n", "unknown section"),
        ("tensors = 3\n", "must be a table"),
        ("[tensors\n", "not valid TOML"),
    ],
)
def test_mistakes_are_input_errors_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=message) as e:
        load(path)
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"percentile": 50.0}, "--percentile"),
        ({"percentile": 100.5}, "--percentile"),
        ({"moving_average": 0.0}, "--moving-average"),
        ({"moving_average": 1.5}, "--moving-average"),
        ({"smooth_quant": -0.1}, "--smooth-quant"),
        ({"smooth_quant": 1.1}, "--smooth-quant"),
        ({"calibrator": "kl"}, "unknown calibrator"),
    ],
)
def test_config_refuses_out_of_range_calibration_options(kwargs, message):
    with pytest.raises(InputError, match=message):
        QuantConfig(**kwargs)


def test_config_accepts_the_boundaries():
    QuantConfig(percentile=100.0, moving_average=1.0, smooth_quant=0.0)
    QuantConfig(smooth_quant=1.0)
