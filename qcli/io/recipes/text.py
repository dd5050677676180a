"""kind = "text": sentences through a Hugging Face tokenizer.json (the `tokenizers` library) -> token inputs.

One table fills every token input the model has under its usual name (`input_ids`, `attention_mask`,
`token_type_ids`; keys of those names rename them). Files: `.txt` (one sample a line, blank lines skipped) and
`.jsonl` (one object a line: `field`, default "text", and `pair_field`, default "text_pair", when present). One
sample per batch, so no padding unless `padding = "max_length"` (or the model's sequence axis is static);
truncation at `max_length` (counted), or refused with `truncation = false`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcli.core.errors import InputError
from qcli.io.feeds import InputSpec
from qcli.io.recipes.keys import Table
from qcli.io.recipes.recipe import KINDS

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
KEYS = {"tokenizer", "max_length", "padding", "truncation", "field", "pair_field", *TOKEN_INPUTS}
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class TextInput:
    names: dict[str, str]  # role (input_ids, attention_mask, token_type_ids) -> model input
    dtypes: dict[str, str]
    tokenizer: Path
    max_length: int
    padding: str  # "none" or "max_length"
    truncation: bool
    field: str
    pair_field: str
    kind: str = "text"
    tallies: dict[str, set] = field(default_factory=dict, compare=False)  # "truncated_samples" -> the samples

    @property
    def fills(self) -> tuple[str, ...]:
        return tuple(self.names.values())

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (".txt", ".jsonl")

    @property
    def side_files(self) -> tuple[Path, ...]:
        return (self.tokenizer,)

    def count(self, path: Path) -> int:
        return len(_lines(path))

    def read(self, path: Path | None, index: int) -> dict[str, np.ndarray]:
        text, pair = self._sample(path, index)
        enc = self._tokenizer().encode(text, pair) if pair is not None else self._tokenizer().encode(text)
        if enc.overflowing:
            if not self.truncation:
                raise InputError(
                    f"{path}:{index + 1}: the text is longer than max_length = {self.max_length} tokens and "
                    "truncation = false: shorten it, or raise max_length"
                )
            self.tallies.setdefault("truncated_samples", set()).add(f"{path.name}:{index + 1}")
        values = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        return {n: np.asarray([values[r]], self.dtypes[r]) for r, n in self.names.items()}

    def _sample(self, path: Path, index: int) -> tuple[str, str | None]:
        line = _lines(path)[index]
        if path.suffix.lower() != ".jsonl":
            return line, None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{index + 1}: not a JSON object ({e})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get(self.field), str):
            raise InputError(f"{path}:{index + 1}: no string field {self.field!r}")
        pair = obj.get(self.pair_field)
        return obj[self.field], pair if isinstance(pair, str) else None

    def _tokenizer(self):
        return _load_tokenizer(self.tokenizer, self.max_length, self.padding)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("max_length", "padding", "truncation", "field", "pair_field")}
        return {"kind": "text", "tokenizer": str(self.tokenizer), "inputs": dict(self.names), **out}


def _lines(path: Path) -> list[str]:
    """The non-blank lines of a text file (read once per modification time, a few files kept: calibration and
    evaluation files read in turn are not read again for every sample)."""
    return _read_lines(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_lines(path: Path, stamp: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from e
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: Path, max_length: int, padding: str):
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError as e:
        raise InputError("text recipes need the `tokenizers` package: pip install tokenizers") from e
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises plain Exceptions on malformed files
        raise InputError(f"{path}: cannot read it as a tokenizer.json ({e})") from e
    tok.no_padding()
    if padding == "max_length":
        tok.enable_padding(length=max_length)
    tok.enable_truncation(max_length)
    return tok


@KINDS.register("text")
def parse(name: str, values: dict, specs: dict[str, InputSpec], base: Path) -> TextInput:
    t = Table(f"[inputs.{name}]", values, KEYS)
    names = {"input_ids": name}
    for role in TOKEN_INPUTS[1:]:
        wanted = t.str(role, role if role in specs else None)
        if wanted is not None:
            if wanted not in specs:
                raise t.error(role, f"is not an input of the model (its inputs: {', '.join(specs)})")
            names[role] = wanted
    tokenizer = Path(t.str("tokenizer", "tokenizer.json"))
    tokenizer = tokenizer if tokenizer.is_absolute() else base / tokenizer
    if not tokenizer.is_file():
        where = "" if Path(t.str("tokenizer", "tokenizer.json")).is_absolute() else " (relative to the recipe's folder)"
        raise t.error("tokenizer", f"no such file: {tokenizer.absolute()}{where}")
    seq = specs[name].shape[-1] if specs[name].shape else None
    static = seq if isinstance(seq, int) and seq > 0 else None
    max_length = t.int("max_length", static or _tokenizer_max_length(tokenizer) or DEFAULT_MAX_LENGTH)
    if static is not None and max_length != static:
        raise t.error("max_length", f"input {name!r} has a fixed sequence length {static}")
    padding = t.str("padding", "max_length" if static else "none", ("none", "max_length"))
    dtypes = {r: specs[n].dtype.name for r, n in names.items()}
    return TextInput(
        names, dtypes, tokenizer, max_length, padding, t.bool("truncation", True),
        t.str("field", "text"), t.str("pair_field", "text_pair"),
    )  # fmt: skip


def _tokenizer_max_length(path: Path) -> int | None:
    """The truncation length written in tokenizer.json, if any (its fixed padding length is ignored)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    trunc = doc.get("truncation") if isinstance(doc, dict) else None
    n = trunc.get("max_length") if isinstance(trunc, dict) else None
    return n if isinstance(n, int) and n > 0 else None
