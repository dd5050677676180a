"""The CPU quantizing, and what its integer kernels can do without overflow.

x86 CPUs without VNNI multiply uint8 x int8 with vpmaddubsw, which adds pairs of products into int16 and
saturates: 255 * 127 * 2 > 32767. With 7-bit weights (-64..63) the pair sum always fits. Measured on an
AVX2 CPU: one 3x3 conv lost 17 dB SQNR with 8-bit weights, none with 7-bit. VNNI (vpdpbusd) and AMX
accumulate in int32 and cannot saturate.

The description is read from /proc/cpuinfo (`CPUINFO`, which tests point at a substitute file).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
_X86 = ("x86_64", "amd64", "i386", "i686")
_INT32_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    machine: str  # platform.machine(), lower case
    model: str  # "model name" line, or "" when unknown
    flags: frozenset[str] | None  # None: the description could not be read

    @property
    def x86(self) -> bool:
        return self.machine in _X86

    @property
    def int32_dot(self) -> str | None:
        """The x86 feature that accumulates u8 x s8 products in int32, if any."""
        return next((f for f in _INT32_DOT if self.flags and f in self.flags), None)

    @property
    def u8s8_may_saturate(self) -> bool:
        if not self.x86:
            return False  # ARM's sdot/udot and other ISAs accumulate in 32 bits
        if self.flags is None:
            return True  # cannot tell: choose the range that is safe everywhere
        return self.int32_dot is None

    def describe(self) -> str:
        feats = []
        if self.x86 and self.flags is not None:
            feats.append(self.int32_dot or "no VNNI")
            feats += [f for f in ("avx512f", "avx2") if f in self.flags][:1]
        elif self.x86:
            feats.append("features unknown")
        name = self.model or "unknown CPU"
        return f"{name} ({', '.join([self.machine, *feats])})"

    def to_dict(self) -> dict:
        return {"machine": self.machine, "model": self.model, "int32_dot": self.int32_dot, "text": self.describe()}


def parse(text: str | None, machine: str) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (None: unreadable)."""
    machine = machine.lower()
    if text is None:
        return CpuInfo(machine, "", None)
    lines = text.splitlines()
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), None)
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    return CpuInfo(machine, model, frozenset(flags) if flags is not None else None)


@lru_cache(maxsize=1)
def host() -> CpuInfo:
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = None
    return parse(text, platform.machine())
