"""The command line's output and error handling: one-line messages, exit codes, progress bars, plan and
report rendering. A command's result goes to stdout (compare's table, or --json); progress, warnings, errors
and quantize's summary (its result is the model file) go to stderr."""

from __future__ import annotations

import json
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qcli.core.errors import InputError, QcliError
from qcli.report.html import write_html
from qcli.report.render import calibration_method, render_layers, render_rich
from qcli.report.report import Report
from qcli.report.verdict import Status

err = Console(stderr=True)
out = Console()


def say(label: str, message: str, style: str = "bold red") -> None:
    """One line on stderr: styled on a terminal, plain and unwrapped elsewhere; never read as markup."""
    if err.is_terminal:
        err.print(f"[{style}]{label}[/] {escape(message)}", highlight=False, soft_wrap=True)
    else:
        sys.stderr.write(f"{label} {message}\n")


@contextmanager
def errors(debug: bool):
    try:
        yield
    except QcliError as e:
        if debug:
            err.print_exception()
        say("gate failed:" if e.exit_code == 1 else "error:", str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        written = getattr(e, "written", [])
        if written:
            names = ", ".join(str(p) for p in written)
            say("interrupted:", f"{names} written and complete; the rest (report, measurements) was not", "yellow")
        else:
            say("interrupted:", "nothing was written", "yellow")
        raise typer.Exit(130) from None
    except Exception as e:  # a bug: one line, and the traceback only on request
        if debug:
            err.print_exception()
        say("internal error:", f"{type(e).__name__}: {e} (a bug in qcli; rerun with --debug and report it)")
        raise typer.Exit(3) from None


class PlainProgress:
    """Progress for logs (no terminal): a line as each phase starts; in a phase that lasts, a line each 10 % of
    its steps (at most one a second) or each `every` seconds, and one when it completes; a phase over within a
    second says nothing more. `clock` is injectable for tests."""

    def __init__(self, write=None, clock=time.monotonic, every: float = 10.0) -> None:
        self.write, self.clock, self.every = write or sys.stderr.write, clock, every

    def __call__(self, desc: str, total: int | None):
        self.write(f"qcli: {desc}{f' ({total})' if total else ''} ...\n")
        start = last = self.clock()
        done, shown = 0, 0

        def advance() -> None:
            nonlocal done, shown, last
            done += 1
            now = self.clock()
            step = total and done * 10 // total > shown * 10 // total and now - last >= 1.0
            if (done == total and now - start >= 1.0) or step or now - last >= self.every:
                pct = f", {done * 100 // total}%" if total else ""
                end = " done" if done == total else ""
                self.write(f"qcli: {desc}{end}: {done}{f'/{total}' if total else ''}{pct}, {now - start:.0f} s\n")
                shown, last = done, now

        return advance


@contextmanager
def progress_bars():
    """Bars on a terminal; elsewhere (CI logs) plain lines at a steady pace (PlainProgress)."""
    if not err.is_terminal:
        yield PlainProgress()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
        redirect_stdout=False,  # stdout carries results (--json > file), never the bar's console
    ) as bar:

        def start(desc: str, total: int):
            task = bar.add_task(desc, total=total)
            return lambda: bar.advance(task)

        yield start


def kv(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--ort-config expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def print_plan(plan: dict, head: list[str] = (), notes: list[str] = ()) -> None:
    lines = list(head) + [
        f"{action:>18}: " + ", ".join(f"{op} x{n}" for op, n in ops.items()) for action, ops in plan["summary"].items()
    ]
    for n in plan["nodes"]:
        if n["action"] != "float" or n["reason"]:
            why = f"  ({n['reason']['text']})" if n["reason"] else ""
            lines.append(f"  {n['action']:<16} {n['op_type']:<18} {n['node']}{why}")
    lines += [f"decided {k}: {d['value']} ({d['why']})" for k, d in plan["decisions"].items()]
    lines += [f"note: {note}" for note in [*plan["notes"], *notes]]
    sys.stderr.write("\n".join(lines) + "\n")


def show(report: Report, json_out: bool, top: int = 0, html: Path | None = None) -> None:
    """compare's result: its table on stdout (`compare ... > result.txt`), or with --json the JSON there and
    the table on stderr; with html, the page written too."""
    if html is not None:
        write_html(report.to_dict(), html)
    if json_out:
        sys.stdout.write(report.to_json() + "\n")
    console = err if json_out else out
    render_rich(report, console, min(3, top) if top else 3)  # with --per-layer, no more than its table ranks
    if top:
        render_layers(report, console, top)


def command_line() -> str:
    """The command line as typed, for the report's provenance."""
    return shlex.join(["qcli", *sys.argv[1:]])


def show_quantized(result, dry_run: bool, json_out: bool) -> None:
    """quantize's result (pipeline.QuantizeResult): the plan (--dry-run) or the report on stderr; JSON on
    stdout with --json."""
    if dry_run:
        for w in result.report.warnings:
            say("warning:", w, "yellow")
        plan = result.plan.to_dict()
        c = result.report.calibration
        if c:  # the ranges the plan shows: which method, and what the search chose (or why it did not run)
            plan["calibration"] = {"method": c["method"], "batches": c["batches"], "search": c.get("search")}
        extra = [n for n in result.report.notes if n not in plan["notes"]]
        if json_out:
            sys.stdout.write(json.dumps({**plan, "notes": plan["notes"] + extra}, indent=2) + "\n")
        else:
            print_plan(plan, [f"calibration: {calibration_method(c)}"] if c else [], extra)
        return
    render_rich(result.report, err)
    # The verdict unwrapped on a terminal (the table may wrap it); elsewhere the report's first row is that line.
    if err.is_terminal and result.report.status in (Status.LOW_FIDELITY, Status.NOT_QUANTIZED):
        say("warning:", result.report.warnings[0], "yellow")
    say("wrote", ", ".join(str(p) for p in result.written), "bold green")
    if json_out:
        sys.stdout.write(result.report.to_json() + "\n")
