"""The benchmark's models and, per model, the quantizations run_bench.py runs on it (its table's rows).

A Variant is one command line: qcli's or onnxruntime's (bench/ort_baseline.py), with extra flags.
BUILDERS names the bench/ script that makes a model that is neither in sample_models/ nor fetched.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from common import BENCH

PY = sys.executable


@dataclass(frozen=True)
class Variant:
    label: str
    slug: str
    optional: bool  # skipped with --quick
    args: tuple[str, ...] = ()  # extra flags for the tool

    def command(self, model: Path, calib: Path, out: Path) -> list[str]:
        qcli = [PY, "-m", "qcli", "quantize", str(model)]
        ort_static = [PY, str(BENCH / "ort_baseline.py"), "static", str(model), str(calib), str(out)]
        base = {
            "qcli-w8a8": qcli + ["--calib", str(calib), "-o", str(out)],
            "qcli-w4a16": qcli + ["--scheme", "w4a16", "-o", str(out)],
            "qcli-dynamic": qcli + ["--scheme", "dynamic", "-o", str(out)],
            "ort-dynamic": [PY, str(BENCH / "ort_baseline.py"), "dynamic", str(model), str(out)],
            "ort-static": ort_static,
            "ort-nbits": [PY, str(BENCH / "ort_baseline.py"), "nbits", str(model), str(out)],
        }[self.slug.split(":")[0]]
        return base + [str(calib) if a == "CALIB" else a for a in self.args]


def qcli_w8a8(label: str = "", *args: str, optional: bool = False) -> Variant:
    name = "-".join(a.lstrip("-") for a in args)
    return Variant(f"qcli W8A8 {label}".strip(), f"qcli-w8a8:{name}" if name else "qcli-w8a8", optional, args)


def ort_static(label: str = "", *args: str, optional: bool = False) -> Variant:
    name = "-".join(a.lstrip("-") for a in args)
    full = f"ORT quantize_static QDQ {label}".strip()
    return Variant(full, f"ort-static:{name}" if name else "ort-static", optional, args)


W8A8 = [
    qcli_w8a8(),
    ort_static(),
    ort_static("reduce_range", "--reduce-range"),
    Variant("ORT quant_pre_process + quantize_static QDQ", "ort-static:pre", True, ("--preprocess",)),
]
# Calibration methods, side by side (issue: better ranges instead of float layers); the default is auto.
METHODS = [
    *(qcli_w8a8(m, "--calibrator", m, optional=True) for m in ("minmax", "percentile", "entropy", "mse")),
    *(ort_static(m, "--method", m, optional=True) for m in ("percentile", "entropy")),
]
# Each accuracy step of the default, taken away alone: the default's figures before that step.
ABLATIONS = [
    qcli_w8a8("minmax (no range search)", "--calibrator", "minmax", optional=True),
    qcli_w8a8("no bias correction", "--no-bias-correction", optional=True),
]
DETECTORS = [qcli_w8a8(), ort_static(), *ABLATIONS]
W4 = [
    Variant("qcli W4A16", "qcli-w4a16", False),
    Variant("ORT MatMulNBits int4 RTN b32", "ort-nbits", False),
]
DYNAMIC = [
    Variant("qcli dynamic", "qcli-dynamic", False),
    Variant("ORT quantize_dynamic per-channel", "ort-dynamic", False),
]
STATIC_PLACEMENT = qcli_w8a8("static placement", "--placement", "static", optional=True)
MODELS = {
    "cnn": W8A8,
    "attention": W8A8 + W4,
    "det": W8A8
    + METHODS
    + ABLATIONS[1:]
    + [STATIC_PLACEMENT, qcli_w8a8("min-sqnr 25", "--min-sqnr", "25", optional=True)],
    "rec": W8A8
    + METHODS
    + ABLATIONS[1:]
    + [qcli_w8a8("percentile min-sqnr 20", "--calibrator", "percentile", "--min-sqnr", "20", optional=True)],
    "cls": W8A8 + [STATIC_PLACEMENT],
    "dwsep": [
        qcli_w8a8(),
        qcli_w8a8("equalize", "--equalize"),
        qcli_w8a8("equalize minmax", "--equalize", "--calibrator", "minmax"),
        ort_static(),
        *ABLATIONS,
    ],
    "minilm": W4
    + DYNAMIC
    + [Variant("qcli dynamic min-sqnr 20", "qcli-dynamic:target", True, ("--calib", "CALIB", "--min-sqnr", "20"))]
    + [Variant(v.label, v.slug, True, v.args) for v in W8A8]
    + METHODS
    + [
        qcli_w8a8("smooth-quant 0.5", "--smooth-quant", "0.5", optional=True),
        qcli_w8a8("smooth-quant 0.6", "--smooth-quant", "0.6", optional=True),
        qcli_w8a8("smooth-quant 0.6 percentile", "--smooth-quant", "0.6", "--calibrator", "percentile", optional=True),
        qcli_w8a8("smooth-quant 0.6 min-sqnr 25", "--smooth-quant", "0.6", "--min-sqnr", "25", optional=True),
    ],
    "effnet": W8A8 + ABLATIONS + [STATIC_PLACEMENT],
    "yolo": W8A8 + ABLATIONS + [STATIC_PLACEMENT],
    "yolox": DETECTORS,
    "picodet": DETECTORS + [qcli_w8a8("equalize", "--equalize", optional=True)],
}
# Models a bench/ script builds (with, for the made ones, their own calib/ and eval/), and that script.
BUILDERS = {
    "minilm": "export_minilm.py",
    "dwsep": "make_dwsep.py",
    "effnet": "make_effnet.py",
    "yolo": "make_yolo.py",
    "yolox": "make_yolox.py",
    "picodet": "make_picodet.py",
}
MADE_WITH_INPUTS = ("dwsep", "effnet", "yolo", "yolox", "picodet")
FETCHED = ("det", "rec", "cls", "minilm")  # fetch_models.py
