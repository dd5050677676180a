"""onnxruntime.quantization baselines, one quantization per process (run_bench.py times it).

    python bench/ort_baseline.py static MODEL CALIB_DIR OUT [--preprocess] [--reduce-range]
    python bench/ort_baseline.py nbits MODEL OUT
    python bench/ort_baseline.py dynamic MODEL OUT

static: quantize_static, QDQ format, per-channel, MinMax calibration (--method: percentile, entropy
        with onnxruntime's default options: 99.999 percentile, 128 quantized bins), QUInt8 activations and
        QInt8 weights, calibrated on the same files as qcli. With --preprocess, the model is
        first run through onnxruntime's recommended quant_pre_process (symbolic shape
        inference + graph optimisation + ONNX shape inference). --reduce-range stores 7-bit
        weights, as onnxruntime recommends on x86 CPUs without VNNI, where uint8 x int8
        products can saturate.
dynamic: quantize_dynamic, per-channel QInt8 weights (activations quantized at run time, no data).
nbits:  MatMulNBitsQuantizer, 4-bit weights in blocks of 32, written as com.microsoft MatMulNBits.
        --algo default: symmetric round-to-nearest (DefaultWeightOnlyQuantConfig, plain RTN);
        --algo gptq: GPTQWeightOnlyQuantConfig (onnxruntime's bundled copy of Neural Compressor's GPTQ,
        its defaults: damping 0.01, no act-order, asymmetric) on the --calib files; --algo hqq:
        HQQWeightOnlyQuantConfig (half-quadratic optimisation of scale and zero point, no data; needs torch).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from common import load_samples
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)


class FolderReader(CalibrationDataReader):
    """Feeds every sample of a calib/ folder once."""

    def __init__(self, model: Path, data_dir: Path):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        self.samples = iter(load_samples(data_dir, names))

    def get_next(self):
        return next(self.samples, None)


CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def static(model: Path, calib: Path, out: Path, preprocess: bool, reduce_range: bool, method: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if preprocess:
            pre = Path(tmp) / "preprocessed.onnx"
            os.chdir(tmp)  # on failure, symbolic shape inference dumps a model and its data into the cwd
            quant_pre_process(str(model), str(pre))
            model = pre
        quantize_static(
            str(model),
            str(out),
            FolderReader(model, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION[method],
        )


def nbits(model: Path, out: Path, algo: str = "default", calib: Path | None = None) -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if algo == "gptq":
        if calib is None:
            raise SystemExit("--algo gptq needs --calib")
        config = mnq.GPTQWeightOnlyQuantConfig(FolderReader(model, calib), block_size=32)
    elif algo == "hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=32, bits=4)
    else:
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=4)
    MatMulNBitsQuantizer = mnq.MatMulNBitsQuantizer
    quantizer = MatMulNBitsQuantizer(onnx.load(str(model)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out))


def dynamic(model: Path, out: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(model), str(out), per_channel=True, weight_type=QuantType.QInt8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p_static = sub.add_parser("static")
    p_static.add_argument("model", type=Path)
    p_static.add_argument("calib", type=Path)
    p_static.add_argument("out", type=Path)
    p_static.add_argument("--preprocess", action="store_true")
    p_static.add_argument("--reduce-range", action="store_true")
    p_static.add_argument("--method", choices=sorted(CALIBRATION), default="minmax")
    p_nbits = sub.add_parser("nbits")
    p_nbits.add_argument("model", type=Path)
    p_nbits.add_argument("out", type=Path)
    p_nbits.add_argument("--algo", choices=("default", "gptq", "hqq"), default="default")
    p_nbits.add_argument("--calib", type=Path)
    p_dynamic = sub.add_parser("dynamic")
    p_dynamic.add_argument("model", type=Path)
    p_dynamic.add_argument("out", type=Path)
    args = parser.parse_args()
    args.model, args.out = args.model.resolve(), args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.mode == "static":
        static(args.model, args.calib.resolve(), args.out, args.preprocess, args.reduce_range, args.method)
    elif args.mode == "dynamic":
        dynamic(args.model, args.out)
    else:
        nbits(args.model, args.out, args.algo, args.calib.resolve() if args.calib else None)


if __name__ == "__main__":
    main()
