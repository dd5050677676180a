"""Reading one recipe table: every key known to its kind and of the type it takes, or one clear error naming
the key (with a "did you mean" for a misspelt one)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from qcli.core.errors import InputError


class Table:
    """A recipe table being read: `where` names it in errors ("[inputs.input]"); keys() must all be taken."""

    def __init__(self, where: str, values: Mapping, allowed: set[str]) -> None:
        self.where, self.values = where, dict(values)
        unknown = sorted(set(self.values) - allowed)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                f"recipe {where}: unknown key {unknown[0]!r}{hint}; this kind takes: {', '.join(sorted(allowed))}"
            )

    def error(self, key: str, what: str) -> InputError:
        return InputError(f"recipe {self.where}: {key} = {self.values.get(key)!r}: {what}")

    def has(self, key: str) -> bool:
        return key in self.values

    def str(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        v = self.values.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self.error(key, "takes a string")
        if choices and v not in choices:
            raise self.error(key, f"takes one of {', '.join(repr(c) for c in choices)}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.values.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, "takes true or false")
        return v

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int | None:
        v = self.values.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.error(key, f"takes a whole number of at least {minimum}")
        return v

    def size(self, key: str) -> tuple[int, int] | int | None:
        """A side length (one int) or [H, W]."""
        v = self.values.get(key)
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            if min(v) >= 1:
                return (v[0], v[1])
        raise self.error(key, "takes a side length (e.g. 256) or [height, width]")

    def numbers(
        self, key: str, count: int | None, default: tuple[float, ...] | None = None
    ) -> tuple[float, ...] | None:
        """A number or a list of `count` numbers (one per channel); a single number is repeated."""
        v = self.values.get(key)
        if v is None:
            return default
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (float(v),) * (count or 1)
        if isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            if count is not None and len(v) != count:
                raise self.error(key, f"takes {count} values (one per channel) or one number")
            return tuple(float(x) for x in v)
        raise self.error(key, "takes a number or a list of numbers")
