"""The CPU description and the one decision that depends on it: 7-bit weights where u8 x s8 pairs saturate."""

import pytest
from checks import CPUINFO
from models import cnn, write_batches

from qcli import QuantConfig, quantize
from qcli.core import hostcpu
from qcli.core.hostcpu import parse


def test_cpuinfo_with_vnni_cannot_saturate():
    cpu = parse(CPUINFO["vnni"], "x86_64")
    assert cpu.int32_dot == "avx512_vnni" and not cpu.u8s8_may_saturate
    assert "Test Xeon VNNI" in cpu.describe() and "avx512_vnni" in cpu.describe()


def test_cpuinfo_with_avx2_only_may_saturate():
    cpu = parse(CPUINFO["avx2"], "x86_64")
    assert cpu.int32_dot is None and cpu.u8s8_may_saturate
    assert "no VNNI" in cpu.describe()


@pytest.mark.parametrize("flag", ["avx_vnni", "amx_int8"])
def test_other_int32_dot_products_count_as_vnni(flag):
    assert not parse(CPUINFO["avx2"].replace("bmi2", f"bmi2 {flag}"), "x86_64").u8s8_may_saturate


def test_unreadable_x86_description_takes_the_safe_range_and_arm_never_saturates():
    assert parse(None, "x86_64").u8s8_may_saturate
    assert parse("flags\t: avx2\n", "x86_64").u8s8_may_saturate
    assert not parse(None, "aarch64").u8s8_may_saturate
    assert not parse("Features\t: fp asimd asimddp\n", "aarch64").u8s8_may_saturate


def test_host_reads_the_substituted_description(cpu_kind):
    kind, cpu = cpu_kind
    assert hostcpu.host() == cpu and cpu.u8s8_may_saturate == (kind == "avx2")


def test_reduce_range_decision_follows_the_cpu_and_is_recorded(tmp_path, cpu_kind):
    """Auto: 7-bit weights exactly on the CPU without VNNI; the plan and the report's effective config say
    which value was taken and why, never `null`."""
    kind, cpu = cpu_kind
    m = tmp_path / "m.onnx"
    import onnx

    onnx.save(cnn(), m)
    write_batches(tmp_path / "c", [(1, 3, 16, 16)] * 3)
    r = quantize(m, QuantConfig(), calib=tmp_path / "c", dry_run=True)
    expected = kind == "avx2"
    dense = [w for w in r.plan.weights if w.role == "weight"]
    assert {w.qtype for w in dense} == {"int8-7bit" if expected else "int8"}
    decided = r.plan.decisions["reduce_range"]
    assert decided["value"] is expected and decided["cpu"]["model"] == cpu.model
    assert r.report.config["reduce_range"] is expected
    assert ("no VNNI" in decided["why"]) == expected
    for forced in (True, False):  # an explicit choice wins on either CPU
        f = quantize(m, QuantConfig.of(reduce_range=forced), calib=tmp_path / "c", dry_run=True)
        assert {w.qtype for w in f.plan.weights if w.role == "weight"} == {"int8-7bit" if forced else "int8"}
        assert f.plan.decisions["reduce_range"]["value"] is forced
