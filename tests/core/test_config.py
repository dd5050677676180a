"""The configuration's groups: options by their CLI names, which the chosen scheme reads, and the effective
configuration the report shows."""

import pytest

from qcli.core.config import Int8Options, QuantConfig, W8A8Options, WeightOnlyOptions, effective
from qcli.core.errors import InputError


def test_flat_options_go_to_their_groups():
    flat = QuantConfig.of(scheme="w4a16", block_size=64, calibrator="mse", per_channel=False)
    assert flat == QuantConfig(
        scheme="w4a16",
        weight_only=WeightOnlyOptions(block_size=64),
        w8a8=W8A8Options(calibrator="mse"),
        int8=Int8Options(per_channel=False),
    )
    with pytest.raises(TypeError, match="blok_size"):
        QuantConfig.of(blok_size=64)
    with pytest.raises(InputError, match="--block-size"):
        QuantConfig.of(block_size=48)


@pytest.mark.parametrize(
    ("options", "ignored"),
    [
        ({"scheme": "dynamic", "placement": "static", "objective": "size"}, ["--objective", "--placement"]),
        ({"scheme": "dynamic", "per_channel": False, "calibrator": "mse"}, ["--calibrator"]),  # int8: read
        ({"scheme": "w8a8", "block_size": 64, "placement": "static"}, ["--block-size"]),
        (
            {"scheme": "w4a16", "min_macs_per_conversion": 0.0, "reduce_range": True},
            ["--reduce-range/--no-reduce-range", "--min-macs"],
        ),
        ({"scheme": "w4a16", "block_size": 32}, []),  # the default: not named
    ],
)
def test_options_the_scheme_does_not_read_are_named_and_left_out_of_the_effective_config(options, ignored):
    config = QuantConfig.of(**options)
    assert config.ignored_options() == ignored
    shown = effective(config, {})
    read_by_w8a8 = {"calibrator", "min_macs_per_conversion"}
    assert ("placement" in shown) == (config.scheme.value != "dynamic")
    assert ("block_size" in shown) == (config.scheme.value in ("w4a16", "w8a16"))
    assert bool(read_by_w8a8 & set(shown)) == (config.scheme.value == "w8a8")
    assert ("per_channel" in shown) == (config.scheme.value in ("w8a8", "dynamic"))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"scheme": "w4a16", "weight_algo": "adaround", "gptq_act_order": True}, ["--act-order"]),
        (
            {"scheme": "w8a16", "weight_algo": "rtn", "gptq_damp": 0.2, "gptq_act_order": True},
            ["--gptq-damp", "--act-order"],
        ),
        ({"scheme": "w4a16", "weight_algo": "gptq", "gptq_damp": 0.2, "gptq_act_order": True}, []),  # gptq reads them
        ({"scheme": "w4a16", "weight_algo": "awq"}, []),  # at their defaults: nothing to say
        ({"scheme": "w8a8", "gptq_act_order": True}, []),  # the scheme's own warning names it (ignored_options)
    ],
)
def test_gptqs_own_options_under_another_algorithm_are_named(options, named):
    assert QuantConfig.of(**options).unread_by_algo() == named
