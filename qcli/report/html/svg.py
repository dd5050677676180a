"""Small hand-written SVG charts for the HTML report: no library, no script, nothing fetched. Every chart scales
to its container (a viewBox, width 100 %), takes its colours from the page's CSS (classes, currentColor) so
light, dark and print modes need nothing here, and carries a <title> per mark: the exact figure on hover.
"""

from __future__ import annotations

from html import escape

W = 720  # the viewBox width every chart is drawn in; the page scales it
CAP = 100.0  # dB: the top of a bar chart of SQNRs


def _svg(height: float, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {W} {height:.0f}" role="img" aria-label="{escape(label)}" '
        f'preserveAspectRatio="xMinYMin meet">{"".join(body)}</svg>'
    )


def _text(x: float, y: float, s: str, cls: str = "", anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(s)}</text>'


def hbars(rows: list[tuple[str, float, str, str]], label: str, unit: str = "") -> str:
    """Horizontal bars: (name, value >= 0, css class, hover text), scaled to the largest value."""
    top = max((v for _, v, _, _ in rows), default=0.0) or 1.0
    body, h, x0 = [], 22, 260
    for i, (name, value, cls, hover) in enumerate(rows):
        y = 6 + i * h
        width = (W - x0 - 90) * value / top
        body.append(_text(x0 - 8, y + 14, name[:40], "lab", "end"))
        body.append(
            f'<rect x="{x0}" y="{y + 3}" width="{max(width, 1):.1f}" height="{h - 8}" class="{cls}">'
            f"<title>{escape(hover)}</title></rect>"
        )
        body.append(_text(x0 + width + 6, y + 14, f"{value:.3g}{unit}", "val"))
    return _svg(12 + len(rows) * h, body, label)


def columns(values: list[tuple[float, str, str]], label: str, floor: float, lines: list[tuple[float, str]]) -> str:
    """Vertical bars in order (value, css class, hover text) from `floor` up, with horizontal reference lines
    (value, label): the error along the network, one bar per layer. Values past CAP (an exact match: inf dB)
    are drawn at CAP."""
    values = [(min(v, CAP), cls, hover) for v, cls, hover in values]
    hi = max([v for v, _, _ in values] + [v for v, _ in lines] + [floor + 1])
    height, left, bottom = 220, 44, 190
    span, n = hi - floor, max(len(values), 1)
    step = (W - left - 8) / n
    y = lambda v: bottom - (bottom - 10) * (min(max(v, floor), hi) - floor) / span  # noqa: E731
    body = [f'<line x1="{left}" y1="{bottom}" x2="{W - 4}" y2="{bottom}" class="axis"/>']
    for v in _ticks(floor, hi):
        body += [_text(left - 6, y(v) + 4, f"{v:g}", "tick", "end")]
        body += [f'<line x1="{left}" y1="{y(v):.1f}" x2="{W - 4}" y2="{y(v):.1f}" class="grid"/>']
    for i, (v, cls, hover) in enumerate(values):
        x = left + i * step + step * 0.1
        body.append(
            f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{max(step * 0.8, 1):.1f}" height="{bottom - y(v):.1f}" '
            f'class="{cls}"><title>{escape(hover)}</title></rect>'
        )
    for v, text in lines:
        body += [f'<line x1="{left}" y1="{y(v):.1f}" x2="{W - 4}" y2="{y(v):.1f}" class="mark"/>']
        body += [_text(W - 8, y(v) - 4, text, "marklab", "end")]
    return _svg(height, body, label)


def _ticks(lo: float, hi: float) -> list[float]:
    import math

    base = 10 ** math.floor(math.log10(max(hi - lo, 1e-9) / 6))
    step = next(base * m for m in (1, 2, 5, 10) if (hi - lo) / (base * m) <= 6)
    first = -(-lo // step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)]


def boxes(series: list[tuple[str, list[float], str]], label: str, unit: str = " ms") -> str:
    """Box plots of runs given as 11 quantiles (min, p10, ..., p90, max): whiskers min-max, box p10-p90, a
    line at the median, one row per model."""
    lo = min(q[0] for _, q, _ in series)
    hi = max(q[-1] for _, q, _ in series)
    lo, hi = lo - 0.05 * (hi - lo or hi or 1), hi + 0.05 * (hi - lo or hi or 1)
    left, right = 130, W - 20
    x = lambda v: left + (right - left) * (v - lo) / (hi - lo)  # noqa: E731
    body, h = [], 46
    for i, (name, q, cls) in enumerate(series):
        yc = 24 + i * h
        hover = f"{name}: median {q[5]:.3g}{unit}, p10-p90 {q[1]:.3g}-{q[9]:.3g}{unit}, min {q[0]:.3g}, max {q[-1]:.3g}"
        body.append(_text(left - 8, yc + 4, name, "lab", "end"))
        body.append(f'<line x1="{x(q[0]):.1f}" y1="{yc}" x2="{x(q[-1]):.1f}" y2="{yc}" class="whisker"/>')
        body.append(
            f'<rect x="{x(q[1]):.1f}" y="{yc - 12}" width="{max(x(q[9]) - x(q[1]), 1):.1f}" height="24" '
            f'class="{cls}"><title>{escape(hover)}</title></rect>'
        )
        body.append(f'<line x1="{x(q[5]):.1f}" y1="{yc - 14}" x2="{x(q[5]):.1f}" y2="{yc + 14}" class="median"/>')
    ybase = 24 + len(series) * h - 18
    for v, anchor in ((lo, "start"), ((lo + hi) / 2, "middle"), (hi, "end")):
        body.append(_text(x(v), ybase + 14, f"{v:.3g}{unit}", "tick", anchor))
    return _svg(ybase + 22, body, label)


def histogram(counts: list[float], observed: tuple[float, float], chosen: tuple[float, float], label: str) -> str:
    """Counts over [observed min, max] (log scale, so the tails show), the chosen range marked, what it clips
    shaded."""
    import math

    lo, hi = observed
    left, right, top, bottom = 8, W - 8, 18, 120
    x = lambda v: left + (right - left) * (v - lo) / ((hi - lo) or 1)  # noqa: E731
    peak = math.log1p(max(counts) or 1)
    step = (right - left) / len(counts)
    body = []
    for i, c in enumerate(counts):
        hgt = (bottom - top) * math.log1p(c) / peak
        body.append(
            f'<rect x="{left + i * step:.1f}" y="{bottom - hgt:.1f}" width="{max(step - 1, 1):.1f}" '
            f'height="{hgt:.1f}" class="hist"><title>{c:.0f} values</title></rect>'
        )
    a, b = x(max(chosen[0], lo)), x(min(chosen[1], hi))
    body.append(f'<rect x="{left}" y="{top}" width="{max(a - left, 0):.1f}" height="{bottom - top}" class="clip"/>')
    body.append(f'<rect x="{b:.1f}" y="{top}" width="{max(right - b, 0):.1f}" height="{bottom - top}" class="clip"/>')
    for v in (a, b):
        body.append(f'<line x1="{v:.1f}" y1="{top - 6}" x2="{v:.1f}" y2="{bottom}" class="mark"/>')
    body.append(_text(left, bottom + 16, f"{lo:.4g}", "tick"))
    body.append(_text(right, bottom + 16, f"{hi:.4g}", "tick", "end"))
    return _svg(bottom + 22, body, label)
