"""Progress off a terminal: plain lines at a steady pace."""

from qcli.cli.output import PlainProgress


def test_progress_off_a_terminal_reports_a_long_phase_at_a_steady_pace():
    """A line at the start; then every 10 % (at most one a second) or every 10 s; a line at the end; a phase
    over within a second prints only its start."""
    lines, now = [], [0.0]
    progress = PlainProgress(lines.append, clock=lambda: now[0])
    advance = progress("per-layer pass", 100)
    for _ in range(100):
        now[0] += 0.83  # 83 s in all, as the per-layer pass
        advance()
    assert (
        lines[0] == "qcli: per-layer pass (100) ...\n"
        and lines[-1] == "qcli: per-layer pass done: 100/100, 100%, 83 s\n"
    )
    assert 10 <= len(lines) <= 12 and "qcli: per-layer pass: 10/100, 10%, 8 s\n" in lines
    lines.clear()
    advance = progress("slow", None)  # no total: every 10 s
    for _ in range(5):
        now[0] += 6.0
        advance()
    assert lines == ["qcli: slow ...\n", "qcli: slow: 2, 12 s\n", "qcli: slow: 4, 24 s\n"]
    lines.clear()
    advance = progress("quick", 50)
    for _ in range(50):
        now[0] += 0.001
        advance()
    assert lines == ["qcli: quick (50) ...\n"]
