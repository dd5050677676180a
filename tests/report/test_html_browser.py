"""The HTML reports in a real browser: headless Chromium opens each page offline (every host mapped to
nowhere), logs no console error and makes no request, and the rendered page shows the JSON's figures.
A screenshot of each lands in screenshots/ (git-ignored) for a person to look at."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .pages import ROOT, make_pages
from .test_html import key_figures

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's `chromium` with apt-get)"
)
SHOTS = ROOT / "screenshots"


def browse(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", *action, page.as_uri()]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def problems(log: str) -> list[str]:
    """Console messages (errors, CSP refusals) and network failures in Chromium's log."""
    marks = ("CONSOLE", "Refused to", "Content Security Policy", "net::ERR", "Uncaught")
    return [ln for ln in log.splitlines() if any(m in ln for m in marks)]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    return make_pages(tmp_path_factory.mktemp("browser"))


def test_each_report_opens_offline_without_an_error_or_a_request_and_shows_its_figures(pages, tmp_path):
    SHOTS.mkdir(exist_ok=True)
    for name, (page, doc) in pages.items():
        done = browse(page, tmp_path / "profile", "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        assert not problems(done.stderr), (name, problems(done.stderr))
        dom = done.stdout
        assert '<section id="summary">' in dom and "</html>" in dom, name
        for figure in key_figures(doc):
            assert figure in dom, (name, figure)
        for suffix, size in (("", "1280,2400"), ("-phone", "390,2400")):  # a desktop and a phone's width
            png = SHOTS / f"{name}{suffix}.png"
            shot = browse(page, tmp_path / "profile", f"--screenshot={png}", f"--window-size={size}")
            assert shot.returncode == 0 and png.stat().st_size > 10_000, (name, suffix)


def test_the_browser_check_catches_a_fetch_and_a_script_error(pages, tmp_path):
    page = pages["w4a16"][0]
    text = page.read_text(encoding="utf-8")
    bad = tmp_path / "bad.html"
    bad.write_text(text.replace("</body>", '<img src="https://example.com/a.png"><script>nope()</script></body>'))
    done = browse(bad, tmp_path / "profile", "--dump-dom")
    found = problems(done.stderr)
    assert any("example.com" in ln for ln in found) and any("nope" in ln for ln in found), done.stderr[-3000:]
