"""A tiny name -> implementation registry with "did you mean" errors. An entry may carry traits (keyword data
given at registration) that callers read instead of keeping a list of names of their own."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from qcli.core.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._traits: dict[str, dict] = {}

    def register(self, name: str, **traits) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            self._traits[name] = traits
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._items))
            raise InputError(f"unknown {self.kind} {name!r}{hint} (known: {known})") from None

    def trait(self, name: str, key: str, default=None):
        self.get(name)  # an unknown name is the user's error, as for get()
        return self._traits[name].get(key, default)

    def names(self) -> list[str]:
        return sorted(self._items)
