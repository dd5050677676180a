"""`--help` at 80 columns: every option name whole, no line wider than the terminal, no value placeholder on a
flag that takes none, options in named groups (every quantize and compare option in one)."""

import pytest
import typer.main
from typer.testing import CliRunner

from qcli.cli.app import app
from qcli.cli.helptext import COMPARE_GROUPS, QUANTIZE_GROUPS

COMMANDS = typer.main.get_command(app).commands


def help_text(*command: str) -> str:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_fits_80_columns_and_names_every_option_whole(name):
    text = help_text(name)
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "…" not in text and "<bool>" not in text
    for p in COMMANDS[name].params:
        for opt in (*p.opts, *p.secondary_opts) if p.param_type_name == "option" else ():
            assert opt in text, f"{name} --help lacks {opt}"


@pytest.mark.parametrize(("name", "groups"), [("quantize", QUANTIZE_GROUPS), ("compare", COMPARE_GROUPS)])
def test_every_option_sits_in_a_named_group(name, groups):
    options = {p.name for p in COMMANDS[name].params if p.param_type_name == "option"} | {"help"}
    grouped = [n for names in groups.values() for n in names]
    assert sorted(grouped) == sorted(options)  # each once, none missing, none stale
    text = help_text(name)
    assert "Other options" not in text and all(f"\n{title}:\n" in text for title in groups)


def test_quantize_help_is_shorter_than_the_rich_tables_were():
    text = help_text("quantize")
    assert len(text.splitlines()) < 200  # rich's boxed tables: 352 lines at 80 columns
    assert " quantize MODEL [OPTIONS]\n" in text  # CliRunner names the program "root"
    assert "  --reduce-range / --no-reduce-range\n" in text
    assert "  --weight-algo, --algo <rtn|gptq|awq|adaround>\n" in text
    examples = text[text.index("Examples:\n\n") + 11 : text.index("Arguments:")].strip("\n").split("\n")
    assert len(examples) > 5 and all(ln.startswith("  qcli ") for ln in examples)  # one block, no blank lines


def test_the_top_level_help_is_plain_too():
    text = help_text()
    assert "╭" not in text and "<bool>" not in text and "  --version  print the version and exit" in text
