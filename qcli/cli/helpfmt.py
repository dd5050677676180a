"""`--help` as plain text that reads at 80 columns: the command's help as written (example lines kept whole),
then the options in named groups, each name in full with the help wrapped beside or under it.

Typer's rich tables squeeze the name column at 80 columns and cut long names (`--activation-sy…`); click's
definition lists never cut a name. A command lists its groups as {title: [parameter names]}; a parameter in
no group is listed under "Other options" (tests/cli keeps quantize's list complete).
"""

from __future__ import annotations

import re

import typer.core

_BOLD = re.compile(r"\*\*(.+?)\*\*")


class GroupedCommand(typer.core.TyperCommand):
    groups: dict[str, list[str]] = {}

    def format_help(self, ctx, formatter) -> None:
        args = [(p.name.upper(), getattr(p, "help", "") or "") for p in self.params if _is_argument(p)]
        formatter.write_usage(ctx.command_path, " ".join([name for name, _ in args] + ["[OPTIONS]"]))
        write_text(self.help or "", formatter)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx) if not _is_argument(p)}
        placed: set[str] = set()
        for title, names in self.groups.items():
            rows = [records[n] for n in names if records.get(n)]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [r for n, r in records.items() if r and n not in placed]
        if rest:
            with formatter.section("Other options" if self.groups else "Options"):
                formatter.write_dl(rest)


def _is_argument(p) -> bool:
    return p.param_type_name == "argument"


def write_text(text: str, formatter) -> None:
    """Paragraphs wrapped to the width; indented lines (examples) written as they are, one block of them without
    blank lines between; **Heading** -> Heading:."""
    example = False
    for para in text.strip("\n").split("\n\n"):
        lines = para.split("\n")
        was, example = example, all(ln.startswith("    ") for ln in lines if ln.strip())
        if not (was and example):
            formatter.write_paragraph()
        if example:
            for ln in lines:
                formatter.write(f"{'':>{formatter.current_indent}}  {ln[4:].rstrip()}\n")
        else:
            formatter.write_text(_BOLD.sub(r"\1:", " ".join(ln.strip() for ln in lines)))


class PlainGroup(typer.core.TyperGroup):
    """The top-level `qcli --help` in the same plain style (click's own layout, not rich's boxes)."""

    def format_help(self, ctx, formatter) -> None:
        super(typer.core.TyperGroup, self).format_help(ctx, formatter)


def grouped(groups: dict[str, list[str]]) -> type[GroupedCommand]:
    """A command class whose --help lists its options in these groups."""
    return type("Grouped", (GroupedCommand,), {"groups": groups})
