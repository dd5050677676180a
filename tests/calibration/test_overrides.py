import pytest

from qcli.calibration.overrides import load
from qcli.core.config import QuantConfig
from qcli.core.errors import InputError
from qcli.core.overrides import CalibMethod, Overrides, TensorOverride


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
    c = QuantConfig.of(calibrator="mse", percentile=99.9, overrides=o)
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
        ("[weights.x]\nbits = 4\n", "unknown section"),
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
        QuantConfig.of(**kwargs)


def test_config_accepts_the_boundaries():
    QuantConfig.of(percentile=100.0, moving_average=1.0, smooth_quant=0.0)
    QuantConfig.of(smooth_quant=1.0)


def test_node_section_loads_and_validates(tmp_path):
    o = load(_write(tmp_path, '[nodes."/head/*"]\nprecision = "float"\n[nodes.Conv]\nprecision = "per-tensor"\n'))
    assert [(n.pattern, n.precision.value) for n in o.nodes] == [("/head/*", "float"), ("Conv", "per-tensor")]
    assert o.for_node("/head/fc", "Gemm").precision.value == "float"
    assert o.for_node("conv1", "Conv").precision.value == "per-tensor"  # by op type
    assert o.for_node("fc", "Gemm") is None
    for text, message in (
        ('[nodes.x]\nprecision = "int4"\n', "unknown precision 'int4'"),
        ('[nodes.x]\nprecision = "float"\ncalibrator = "mse"\n', "exactly one key"),
    ):
        with pytest.raises(InputError, match=message):
            load(_write(tmp_path, text))


def test_node_precisions_change_the_plan_and_are_recorded(tmp_path):
    """float: kept float with the entry named; int8: on int8 though the cost model would keep it float;
    per-tensor: one weight scale."""
    import onnx
    from models import cnn, write_batches

    from qcli import quantize
    from qcli.core.overrides import NodeOverride, Precision
    from qcli.core.plan import Action, Why

    onnx.save(cnn(), tmp_path / "m.onnx")
    write_batches(tmp_path / "c", [(2, 3, 16, 16)] * 4)
    costly = 1e6  # MACs per converted element: no layer pays for its conversions
    base = quantize(
        tmp_path / "m.onnx", QuantConfig.of(min_macs_per_conversion=costly), tmp_path / "c", tmp_path / "q.onnx"
    )
    assert base.plan.decision("conv1").why == Why.SPEED
    nodes = (
        NodeOverride("conv1", Precision.INT8),
        NodeOverride("conv2", Precision.FLOAT),
        NodeOverride("conv3", Precision.PER_TENSOR),
        NodeOverride("/nothing/*", Precision.FLOAT),
    )
    r = quantize(
        tmp_path / "m.onnx",
        QuantConfig.of(min_macs_per_conversion=costly, overrides=Overrides(nodes=nodes)),
        tmp_path / "c",
        tmp_path / "q.onnx",
        latency_runs=1,
    )
    assert r.plan.decision("conv1").action == Action.INT8
    d = r.plan.decision("conv2")
    assert d.action == Action.FLOAT and d.why == Why.EXCLUDED and "--overrides" in d.reason.text
    axes = {w.node: w.axis for w in r.plan.weights if w.role == "weight"}
    assert axes["conv3"] is None and axes["conv1"] == 0
    assert r.plan.overrides == {"conv1": "int8", "conv2": "float", "conv3": "per-tensor"}
    assert any('[nodes."/nothing/*"] matches no node' in w for w in r.report.warnings)
