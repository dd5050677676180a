"""The package's shape, as docs/architecture.md draws it: layers that import only downward, a scheme branched on
only by its handler and the config, every scheme registered, small modules and functions."""

import ast
from pathlib import Path

import pytest

from qcli.core.config import GROUPS, READS, Scheme
from qcli.schemes import SCHEMES
from qcli.schemes.base import SchemeHandler

PACKAGE = Path(__file__).resolve().parent.parent / "qcli"
# Lowest first: a module may import its own layer and those before it, never one after.
LAYERS = ["core", "io", "weights", "calibration", "passes", "measure", "steps", "schemes", "report", "compare"]
LAYERS += ["pipeline", "__init__", "cli", "__main__"]  # __init__: the public API, which the CLI is built on
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_TOP_LEVEL = 330, 60, 12
SCHEME_OWNERS = ("schemes", "core/config.py")  # the only places that branch on a scheme


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(parts: list[str]) -> str:
    """The layer of a module given by its parts under qcli/ (a file path's or a dotted name's); a name the
    package root defines (qcli.__version__) is the root's."""
    name = parts[0].removesuffix(".py") if parts else "__init__"
    return name if name in LAYERS else "__init__"


def imported(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qcli":
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "qcli" else [node.module]
            out += names
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "qcli"]
    return out


def test_layers_import_only_downward():
    upward = []
    for path in modules():
        mine = LAYERS.index(layer_of(list(path.relative_to(PACKAGE).parts)))
        for name in imported(ast.parse(path.read_text())):
            theirs = LAYERS.index(layer_of(name.split(".")[1:]))
            if theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not upward


def test_only_the_handlers_and_the_config_branch_on_a_scheme():
    values = {s.value for s in Scheme}
    found = []
    for path in modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(SCHEME_OWNERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            member = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Scheme"
            literal = isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in values for c in [node.left, *node.comparators]
            )
            if member or literal:
                found.append(f"{rel}:{node.lineno}")
    assert not found


def test_every_scheme_has_a_handler_and_reads_known_option_groups():
    assert set(SCHEMES) == set(Scheme) == set(READS)
    for scheme, handler in SCHEMES.items():
        assert isinstance(handler, SchemeHandler) and handler.scheme == scheme
        assert handler.suffix.endswith(".onnx") and set(READS[scheme]) <= set(GROUPS)
    assert len({h.suffix for h in SCHEMES.values()}) == len(SCHEMES)  # default outputs never collide


def body_lines(node: ast.FunctionDef) -> int:
    """Lines from the first statement after the docstring to the end: a signature (CLI options) is not counted."""
    body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
    return node.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [
        f"{node.name} ({body_lines(node)} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long


def test_the_package_top_holds_a_few_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= MAX_TOP_LEVEL
