"""`qcli quantize`: its flags -> QuantConfig (defaults read from config.DEFAULT), the pipeline, the report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from qcli import pipeline
from qcli.calibration.overrides import load as load_overrides
from qcli.cli.output import command_line, err, errors, kv, progress_bars, show_quantized
from qcli.cli.planflags import replay_config
from qcli.core.config import DEFAULT, CalibMethod, Objective, Placement, QuantConfig, Scheme, WeightAlgo, WeightFormat
from qcli.core.errors import GateFailed
from qcli.core.overrides import Overrides
from qcli.report.render import render_rich


def quantize(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model (never modified)")],
    calib: Annotated[
        Path | None,
        typer.Option(
            help="calibration data: a folder of `*.npy`, `*.npz` or `<sample>/<input>.npy` batches, or raw files (images, a .txt/.jsonl file) read through --recipe"
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="TOML recipe turning raw files into the model's inputs, for --calib and --eval (`qcli recipe MODEL` writes one)"
        ),
    ] = None,
    skip_bad_files: Annotated[
        bool,
        typer.Option(
            "--skip-bad-files",
            help="skip raw files that cannot be decoded or are of another kind (listed in the report)",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="output model (default: `<model>.int8.onnx`, `<model>.dyn.onnx`, `<model>.int4.onnx` or `<model>.w8.onnx`)",
        ),
    ] = None,
    scheme: Annotated[
        Scheme,
        typer.Option(
            help="w8a8: static int8 QDQ; dynamic: int8 weights, activations quantized at run time (no data "
            "needed); w4a16 / w8a16: weight-only int4 / int8 blocks"
        ),
    ] = DEFAULT.scheme,
    per_tensor: Annotated[
        bool, typer.Option("--per-tensor", help="one weight scale per tensor instead of per output channel")
    ] = not DEFAULT.int8.per_channel,
    activation_symmetric: Annotated[
        bool, typer.Option("--activation-symmetric", help="int8 symmetric activations instead of uint8 asymmetric")
    ] = DEFAULT.w8a8.activation_symmetric,
    reduce_range: Annotated[
        bool | None,
        typer.Option(
            "--reduce-range/--no-reduce-range",
            help="7-bit weights, so int8 kernels cannot saturate on x86 CPUs without VNNI [default: auto-detect]",
        ),
    ] = DEFAULT.int8.reduce_range,
    calibrator: Annotated[
        CalibMethod,
        typer.Option(
            help="activation range: auto (each candidate measured at the model's outputs on held-aside files; "
            "minmax with fewer than 15 files), minmax, percentile, entropy (KL), mse, or least-error (per "
            "tensor, the method with the least expected error)"
        ),
    ] = DEFAULT.w8a8.calibrator,
    percentile: Annotated[
        float, typer.Option(help="percentile calibrator: the share of values (%, two-sided) the range keeps")
    ] = DEFAULT.w8a8.percentile,
    moving_average: Annotated[
        float | None, typer.Option(help="minmax calibrator: moving-average constant per batch (0 to 1)")
    ] = DEFAULT.w8a8.moving_average,
    smooth_quant: Annotated[
        float | None,
        typer.Option(
            metavar="ALPHA",
            help="SmoothQuant: move activation outliers into the next MatMul/Gemm weights (ALPHA 0 to 1, e.g. 0.5)",
        ),
    ] = DEFAULT.w8a8.smooth_quant,
    equalize: Annotated[
        bool,
        typer.Option(
            "--equalize",
            help="cross-layer equalization of Conv -> (Relu) -> Conv pairs (and Conv -> GlobalAveragePool -> Gemm "
            "heads) first, and channel scaling around HardSwish/SiLU wherever a channel reaches 4x the median one",
        ),
    ] = DEFAULT.w8a8.equalize,
    channel_scaling: Annotated[
        bool,
        typer.Option(
            help="w8a8: scale the channels around activations no scale crosses (HardSwish, SiLU, ...) where one "
            "reaches 16x the median channel (exact in float)"
        ),
    ] = DEFAULT.w8a8.channel_scaling,
    overrides: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of per-tensor calibration methods and per-node precisions (format: docs/calibration.md)"
        ),
    ] = None,
    calib_limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="use at most N calibration files, evenly spread")
    ] = DEFAULT.w8a8.calib_limit,
    weight_algo: Annotated[
        WeightAlgo,
        typer.Option("--weight-algo", "--algo", help="w4a16/w8a16: rtn (no data); gptq, awq, adaround (need --calib)"),
    ] = DEFAULT.weight_only.weight_algo,
    block_size: Annotated[
        int, typer.Option(help="w4a16: weights per scale along the reduction axis (power of two, 16 to 256)")
    ] = DEFAULT.weight_only.block_size,
    clip_search: Annotated[
        bool,
        typer.Option(
            "--clip-search",
            help="w4a16/w8a16, every algorithm: per block, the clipping with the least error (uses --calib if given)",
        ),
    ] = DEFAULT.weight_only.clip_search,
    gptq_damp: Annotated[
        float, typer.Option(help="gptq: damping, a fraction of the mean diagonal of X^T X")
    ] = DEFAULT.weight_only.gptq_damp,
    act_order: Annotated[
        bool, typer.Option("--act-order", help="gptq: quantize columns by decreasing activation energy")
    ] = DEFAULT.weight_only.gptq_act_order,
    weight_format: Annotated[
        WeightFormat,
        typer.Option(
            "--format",
            help="w4a16/w8a16: qdq (portable DequantizeLinear -> MatMul), ort (onnxruntime's MatMulNBits / "
            "GatherBlockQuantized) or auto (time both on this CPU, keep the fastest that keeps the exact math's "
            "fidelity, or with --min-sqnr the fastest that meets it)",
        ),
    ] = DEFAULT.weight_only.weight_format,
    timing_batch: Annotated[
        list[int] | None,
        typer.Option(
            "--timing-batch",
            metavar="N",
            help="w4a16/w8a16: batch size to time --format auto and measured placement at (repeatable; the "
            "slowest size decides) [default: " + ", ".join(map(str, DEFAULT.weight_only.timing_batches)) + "]",
        ),
    ] = None,
    weight_asymmetric: Annotated[
        bool, typer.Option("--weight-asymmetric", help="w4a16: uint4 with a zero point per block")
    ] = not DEFAULT.weight_only.weight_symmetric_int4,
    guard: Annotated[
        bool,
        typer.Option(
            help="w8a8: keep float the layers that cause a large share of the noise at the model's outputs "
            "(measured on held-aside calibration files; an accuracy target replaces it)"
        ),
    ] = DEFAULT.w8a8.accuracy_guard,
    bias_correction: Annotated[
        bool,
        typer.Option(
            help="w8a8: fold each int8 Conv/Gemm's mean output shift into its bias; kept where the model "
            "measures better on held-aside files"
        ),
    ] = DEFAULT.w8a8.bias_correction,
    min_act_sqnr: Annotated[
        float,
        typer.Option(
            help="expert: also keep float the ops whose input activation quantizes (alone, per tensor) to fewer dB; "
            "0 (default) is off"
        ),
    ] = DEFAULT.w8a8.min_activation_sqnr,
    min_sqnr: Annotated[
        float | None,
        typer.Option(
            metavar="DB",
            help="accuracy target: the fewest layers back to float (w4a16: weights to 8-bit blocks) until every "
            "output's SQNR (dB) reaches it on held-out data; exit 1 if it cannot be met",
        ),
    ] = DEFAULT.min_sqnr,
    max_top1_drop: Annotated[
        float | None,
        typer.Option(metavar="PCT", help="accuracy target: at most PCT % of class-score rows may change their top-1"),
    ] = DEFAULT.max_top1_drop,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NODE", help="node name, op type or node-name glob (`/head/*`) to keep float (repeatable)"
        ),
    ] = None,
    min_macs: Annotated[
        float, typer.Option(help="keep an int8 op float when it does fewer MACs per element converted at its edges")
    ] = DEFAULT.w8a8.min_macs_per_conversion,
    objective: Annotated[
        Objective,
        typer.Option(
            help="w8a8, w4a16, w8a16: latency (the fastest model within the accuracy guard, never slower than "
            "FP32 by choice) or size (quantize every op that can be)"
        ),
    ] = DEFAULT.objective,
    placement: Annotated[
        Placement,
        typer.Option(
            help="measured (w8a8: time on this CPU the choices the cost rule is unsure about; w4a16/w8a16: weights "
            "back to float where the chosen form is slower than FP32) or static (the same plan on every machine)"
        ),
    ] = DEFAULT.placement,
    eval_dir: Annotated[
        Path | None, typer.Option("--eval", help="data folder for the report's fidelity figures")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan and stop; write nothing")] = False,
    ort_config: Annotated[
        list[str] | None,
        typer.Option(
            "--ort-config",
            metavar="KEY=VALUE",
            help="onnxruntime session config KEY=VALUE for the measurements (repeatable)",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON on stdout")] = False,
    html: Annotated[
        bool, typer.Option("--html/--no-html", help="write OUT.report.html beside the JSON and Markdown reports")
    ] = True,
    allow_quantized: Annotated[
        bool,
        typer.Option(
            "--allow-quantized",
            help="a model that already holds quantized ops: quantize what is still float, leave those as they are",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="exit 1 when the model written measures below the fidelity floors (worst output 20 dB, top-1 "
            "agreement 97%) or quantizes nothing; the model and its report are written all the same",
        ),
    ] = False,
    save_plan: Annotated[
        Path | None,
        typer.Option("--save-plan", metavar="FILE", help="also write every decision and range to FILE (for --plan)"),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            metavar="FILE",
            help="apply a plan saved with --save-plan: no calibration or timing, the same model bytes; options "
            "left out are the plan's",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    with errors(debug), progress_bars() as progress:
        config = QuantConfig.of(  # validates: the API refuses what the CLI refuses
            scheme=scheme,
            per_channel=not per_tensor,
            activation_symmetric=activation_symmetric,
            reduce_range=reduce_range,
            calibrator=calibrator,
            percentile=percentile,
            moving_average=moving_average,
            smooth_quant=smooth_quant,
            equalize=equalize,
            channel_scaling=channel_scaling,
            overrides=load_overrides(overrides) if overrides else Overrides(),
            calib_limit=calib_limit,
            block_size=block_size,
            weight_symmetric_int4=not weight_asymmetric,
            weight_format=weight_format,
            timing_batches=tuple(timing_batch or DEFAULT.weight_only.timing_batches),
            clip_search=clip_search,
            gptq_damp=gptq_damp,
            gptq_act_order=act_order,
            exclude=tuple(exclude or ()),
            min_macs_per_conversion=min_macs,
            objective=objective,
            placement=placement,
            min_activation_sqnr=min_act_sqnr,
            accuracy_guard=guard,
            bias_correction=bias_correction,
            weight_algo=weight_algo,
            min_sqnr=min_sqnr,
            max_top1_drop=max_top1_drop,
        )
        if plan:
            config = replay_config(ctx, config, plan)
        try:
            result = pipeline.quantize(
                model,
                config,
                calib,
                output,
                eval_dir,
                dry_run,
                progress,
                ort_config=kv(ort_config),
                command=command_line(),
                strict=strict,
                html=html,
                allow_quantized=allow_quantized,
                recipe=recipe,
                skip_bad_files=skip_bad_files,
                plan=plan,
                save_plan=save_plan,
            )
        except GateFailed as e:  # the target was not met: the best model found is written, and reported
            render_rich(e.report, err)
            if json_out:
                sys.stdout.write(e.report.to_json() + "\n")
            raise
    show_quantized(result, dry_run, json_out)
