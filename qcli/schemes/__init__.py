"""One handler per scheme, in a registry keyed by scheme (base.py says what a handler is). Adding a scheme is
a folder with its handler, one line here, and its tests."""

from __future__ import annotations

from qcli.core.config import Scheme
from qcli.schemes.base import SchemeHandler
from qcli.schemes.dynamic.handler import Dynamic
from qcli.schemes.w8a8.handler import W8A8
from qcli.schemes.weight_only.handler import WeightOnly

SCHEMES: dict[Scheme, SchemeHandler] = {
    h.scheme: h
    for h in (
        W8A8(),
        Dynamic(),
        WeightOnly(Scheme.W4A16, ".int4.onnx", relief="8-bit blocks"),
        WeightOnly(Scheme.W8A16, ".w8.onnx", relief="float"),
    )
}


def handler_for(scheme: Scheme) -> SchemeHandler:
    return SCHEMES[Scheme(scheme)]
