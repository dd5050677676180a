"""How long-running work reports progress: a callable the CLI turns into bars (and the API ignores)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int], Callable[[], None]]  # (task description, total) -> advance()


def no_progress(desc: str, total: int) -> Callable[[], None]:
    return lambda: None
