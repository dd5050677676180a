"""The README's quick start runs as written, the CLI reference names every option, and every relative link resolves.

The quick start is the fenced block after the `<!-- quickstart -->` comment in README.md. Each `qcli ...` line runs
with the installed `qcli` (the script next to this Python, else `python -m qcli`) in a temporary folder that sees
`sample_models/` of this checkout, so the outputs it names land in tmp_path, never in the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Pages linked before they are written (the package restructuring writes docs/architecture.md); once a page
# exists its links and anchors are checked like any other.
PENDING = {DOCS / "architecture.md"}

QUICKSTART = re.compile(r"<!--\s*quickstart\b.*?-->\s*```[a-z]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def qcli() -> list[str]:
    script = Path(sys.executable).with_name("qcli")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qcli"]


def quickstart_commands(text: str) -> list[list[str]]:
    """The quick start's commands, one argv each; `\\` continues a line, `#` starts a comment."""
    m = QUICKSTART.search(text)
    assert m, "README.md: no fenced block after a <!-- quickstart --> comment"
    joined = re.sub(r"\\\n", " ", m[1])
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [c for c in commands if c]


def option_value(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_quickstart_block_quantizes_and_checks_with_gates():
    commands = quickstart_commands(README.read_text(encoding="utf-8"))
    assert all(c[0] == "qcli" for c in commands), "every quick-start line runs the installed `qcli`"
    subcommands = [c[1] for c in commands]
    assert "quantize" in subcommands and "compare" in subcommands
    assert any(c[1] == "compare" and "--min-sqnr" in c for c in commands), "the quick start compares with a gate"
    assert subcommands.index("quantize") < subcommands.index("compare")


def test_quickstart_runs(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    try:
        (work / "sample_models").symlink_to(ROOT / "sample_models", target_is_directory=True)
    except OSError:  # no symlinks here: a copy (the sample models are small)
        shutil.copytree(ROOT / "sample_models", work / "sample_models")
    for argv in quickstart_commands(README.read_text(encoding="utf-8")):
        shown = shlex.join(argv)
        absolute = [arg for arg in argv[2:] if Path(arg).is_absolute()]
        assert not absolute, f"{shown}: use paths relative to the repository root, not {absolute}"
        done = run(qcli() + argv[1:], work)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{shown} exited {done.returncode}:\n{output[-3000:]}"
        if argv[1] == "quantize":
            out = option_value(argv, "-o", "--output")
            assert out, f"{shown}: the quick start names its output (-o)"
            for path in (out, out + ".report.json", out + ".report.md"):
                assert (work / path).is_file(), f"{shown} did not write {path}"
        if argv[1] == "compare":
            assert "qcli compare:" in output, f"{shown} printed no result:\n{output[-3000:]}"
            for gate in ("min-sqnr", "max-top1-drop"):
                if f"--{gate}" in argv:
                    assert f"gate: {gate} passed" in output, f"{shown}: no passed {gate} gate:\n{output[-3000:]}"
            if "--per-layer" in argv:
                assert "per-layer error" in output, f"{shown}: no per-layer table:\n{output[-3000:]}"


@pytest.mark.parametrize(
    "command", [[], ["quantize"], ["compare"], ["inspect"], ["recipe"], ["report"]], ids=lambda c: " ".join(c) or "qcli"
)
def test_cli_reference_names_every_option(command):
    done = run(qcli() + command + ["--help"], ROOT)
    assert done.returncode == 0, done.stderr
    options = set(OPTION.findall(done.stdout)) - {"--help"}
    assert options, f"no options found in `qcli {' '.join(command)} --help`"
    reference = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){o}(?![\w-])", reference))
    assert not missing, f"docs/cli.md does not describe {missing} (from `qcli {' '.join(command)} --help`)"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", strip_code(page.read_text(encoding="utf-8")), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def strip_code(text: str) -> str:
    """Markdown without fenced or indented code blocks (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"(?:^(?: {4}|\t).*\n)+", "", text, flags=re.M)


PAGES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"`[^`\n]*`", "", strip_code(page.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if dest in PENDING and not dest.exists():
            continue
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_docs_index_lists_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and f"]({p.name})" not in index]
    assert not unlisted, f"docs/index.md does not link {unlisted}"
