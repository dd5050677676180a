import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checks import CPUINFO  # noqa: E402

from qcli.core import hostcpu  # noqa: E402
from qcli.io import session
from qcli.measure import diagnose


def simulate_cpu(monkeypatch, tmp_path: Path, kind: str) -> hostcpu.CpuInfo:
    """Make qcli see a CPU of this kind ("vnni" or "avx2"), whatever this machine is."""
    fake = tmp_path / f"cpuinfo-{kind}"
    fake.write_text(CPUINFO[kind])
    monkeypatch.setattr(hostcpu, "CPUINFO", fake)
    monkeypatch.setattr(hostcpu.platform, "machine", lambda: "x86_64")
    hostcpu.host.cache_clear()
    cpu = hostcpu.host()
    assert (cpu.int32_dot is not None) == (kind == "vnni")
    return cpu


@pytest.fixture(params=["vnni", "avx2"])
def cpu_kind(request, monkeypatch, tmp_path_factory):
    """Runs the test once as on an x86 CPU with AVX-512 VNNI and once as on one with AVX2 only.
    Only for tests of decisions (plans): what runs is this machine's real kernels."""
    yield request.param, simulate_cpu(monkeypatch, tmp_path_factory.mktemp("cpu"), request.param)
    hostcpu.host.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cpu_cache(monkeypatch, tmp_path_factory):
    """QCLI_TEST_CPU=avx2 runs the whole suite as on a CPU without VNNI (7-bit weights everywhere). On a VNNI
    machine that is a faithful stand-in: 7-bit weights cannot saturate on either kind."""
    kind = os.environ.get("QCLI_TEST_CPU")
    if kind:
        simulate_cpu(monkeypatch, tmp_path_factory.mktemp("cpu"), kind)
    yield
    hostcpu.host.cache_clear()


@pytest.fixture(autouse=True)
def _no_timed_placement(request, monkeypatch):
    """Measured placement decides by timing this machine: outside tests marked `timed_placement` (which replace
    the timer with a stand-in) it is replaced by 'timed, nothing to change', so plans in tests are the static
    rule's, whatever the machine's speed."""
    if request.node.get_closest_marker("timed_placement"):
        return
    from qcli.steps import placement

    monkeypatch.setattr(placement, "place", lambda model, ref, plan, *a, **k: placement.PlacementResult(plan, 0.0))


@pytest.fixture
def sessions(monkeypatch):
    """The per-layer pass's sessions: every one opened (by file name) and the most open at once."""
    seen = {"opened": [], "live": 0, "most": 0}

    class Counted(session.Session):
        def __init__(self, path, *a, **k):
            super().__init__(path, *a, **k)
            seen["opened"].append(Path(path).name)
            seen["live"] += 1
            seen["most"] = max(seen["most"], seen["live"])

        def close(self):
            if self.sess is not None:
                seen["live"] -= 1
            super().close()

    monkeypatch.setattr(diagnose, "Session", Counted)
    return seen
