"""The qcli command line: flags -> QuantConfig, errors -> exit codes. No algorithms here.

Exit codes: 0 ok, 1 a compare gate or quantize accuracy target not met, 2 usage or input error, 3 internal error (a bug).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from qcli import pipeline
from qcli.cli.helpfmt import GroupedCommand, PlainGroup, grouped
from qcli.cli.helptext import (
    COMPARE_GROUPS,
    COMPARE_HELP,
    INSPECT_HELP,
    QUANTIZE_GROUPS,
    QUANTIZE_HELP,
    RECIPE_HELP,
    REPORT_HELP,
)
from qcli.cli.output import command_line, errors, kv, progress_bars, say, show
from qcli.cli.quantize import quantize
from qcli.core.config import DEFAULT, QuantConfig, Scheme
from qcli.core.errors import GateFailed, InputError
from qcli.io.model_io import check_writable
from qcli.io.outpaths import refuse_inputs
from qcli.report import inspection

app = typer.Typer(
    cls=PlainGroup,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Quantize ONNX models for CPUs and measure what it cost. Exit codes: 0 ok, "
    "1 a compare gate, an accuracy target or --strict's fidelity floors not met, 2 usage, input or environment "
    "error, 3 internal error.",
)


app.command(help=QUANTIZE_HELP, cls=grouped(QUANTIZE_GROUPS))(quantize)


@app.command(help=COMPARE_HELP, cls=grouped(COMPARE_GROUPS))
def compare(
    reference: Annotated[Path, typer.Argument(help="reference (FP32) model")],
    candidate: Annotated[Path, typer.Argument(help="quantized model")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="evaluation data (same formats as quantize --calib); without it: size, and latency on an input made from the input specs"
        ),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="TOML recipe turning raw files into the model's inputs (`qcli recipe`)")
    ] = None,
    min_sqnr: Annotated[
        float | None, typer.Option(metavar="DB", help="gate: fail (exit 1) if any output's SQNR (dB) is lower")
    ] = None,
    max_top1_drop: Annotated[
        float | None,
        typer.Option(metavar="PCT", help="gate: fail (exit 1) if more than PCT % of top-1 classes change"),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            metavar="PCT", help="gate: fail (exit 1) if top-1 accuracy against the labels drops by more than PCT points"
        ),
    ] = None,
    skip_bad_files: Annotated[
        bool,
        typer.Option(
            "--skip-bad-files",
            help="skip raw files that cannot be decoded or are of another kind (listed in the report)",
        ),
    ] = False,
    runs: Annotated[int, typer.Option(min=1, metavar="N", help="latency runs per model (interleaved)")] = 30,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer", help="rank layers by the error each adds (tensors matched by name; any tool's model)"
        ),
    ] = False,
    top: Annotated[
        int, typer.Option(min=1, metavar="N", help="--per-layer: rows in the ranked table (all in --json)")
    ] = 20,
    ort_config: Annotated[
        list[str] | None,
        typer.Option(
            "--ort-config",
            metavar="KEY=VALUE",
            help="onnxruntime session config KEY=VALUE for the measurements (repeatable)",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print results as JSON on stdout")] = False,
    html: Annotated[
        Path | None, typer.Option(metavar="FILE", help="also write the report as a self-contained HTML page")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    with errors(debug):
        if html is not None:
            reads = {"the reference model": reference, "the candidate model": candidate, "the data": data}
            refuse_inputs(html, "--html", reads | {"the recipe": recipe})
            check_writable(html)
        failed = None
        with progress_bars() as progress:  # closed before the result is printed: a live bar captures stdout
            try:
                report = pipeline.compare(
                    reference,
                    candidate,
                    data,
                    min_sqnr,
                    max_top1_drop,
                    runs,
                    progress,
                    ort_config=kv(ort_config),
                    per_layer=per_layer,
                    command=command_line(),
                    recipe=recipe,
                    max_accuracy_drop=max_accuracy_drop,
                    skip_bad_files=skip_bad_files,
                )
            except GateFailed as e:
                failed, report = e, e.report
        show(report, json_out, top if per_layer else 0, html)
        if failed is not None:
            raise failed


@app.command(help=INSPECT_HELP, cls=GroupedCommand)
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model (read only)")],
    scheme: Annotated[Scheme, typer.Option(help="the scheme to plan for")] = DEFAULT.scheme,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NODE", help="node name, op type or node-name glob (`/head/*`) to keep float (repeatable)"
        ),
    ] = None,
    block_size: Annotated[int, typer.Option(help="w4a16: weights per scale along K")] = DEFAULT.weight_only.block_size,
    json_out: Annotated[bool, typer.Option("--json", help="print the inspection as JSON on stdout")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    with errors(debug):
        config = QuantConfig.of(scheme=scheme, exclude=tuple(exclude or ()), block_size=block_size)
        info = inspection.inspect(model, config)
    if json_out:
        sys.stdout.write(json.dumps(info.to_dict(), indent=2) + "\n")
    for line in info.lines():
        key, _, rest = line.partition(": ")
        say(f"{key}:", rest, "yellow" if key == "warning" else "bold")


@app.command(help=RECIPE_HELP, cls=GroupedCommand)
def recipe(
    model: Annotated[Path, typer.Argument(help="ONNX model (read only)")],
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    with errors(debug):
        text = inspection.starting_recipe(model)
    sys.stdout.write(text)


@app.command(help=REPORT_HELP, cls=GroupedCommand)
def report(
    report_json: Annotated[Path, typer.Argument(help="a report qcli wrote (OUT.report.json, compare --json's output)")],
    html: Annotated[Path, typer.Option(metavar="FILE", help="write the report as a self-contained HTML page")],
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    from qcli.report.html import render_html, write_html
    from qcli.report.report import load_report

    with errors(debug):
        doc = load_report(report_json)
        refuse_inputs(html, "--html", {"the report read": report_json})
        check_writable(html)
        try:
            page = render_html(doc)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:  # deeper than load_report checks
            raise InputError(f"{report_json} is not a report as qcli writes it ({type(e).__name__}: {e})") from None
        say("wrote", str(write_html(doc, html, page)), "bold green")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    if version:
        from qcli import __version__

        sys.stdout.write(f"qcli {__version__}\n")
        raise typer.Exit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)  # how CI cancels a job: handled as Ctrl-C is
    try:
        code = app(standalone_mode=False)
    except CLICK_ERROR as e:  # a usage error: one plain line (CI logs), as every other error is
        if type(e).__name__ == "NoArgsIsHelpError":  # `qcli` alone: the help
            e.show()
        else:
            sys.stderr.write(usage_error(e) + "\n")
        sys.exit(e.exit_code)
    except typer.Abort:  # interrupted before a command ran
        sys.stderr.write("interrupted: nothing was written\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# click's exception base, whether typer vendors click (0.2x) or uses it: the one BadParameter derives from
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def usage_error(e) -> str:
    """`error: <what>` and where help is, on one line (click's own box wraps it over several)."""
    what = " ".join(e.format_message().replace("Value error, ", "").split())
    ctx = getattr(e, "ctx", None)
    return f"error: {what}" + (f" (see '{ctx.command_path} --help')" if ctx is not None else "")


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt
