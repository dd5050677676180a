"""Errors a person can act on. Each carries the process exit code the CLI uses."""

from __future__ import annotations


class QcliError(Exception):
    """Base class: a one-line message that says what is wrong and what to do."""

    exit_code = 2


class InputError(QcliError):
    """A model, data folder or option the user gave cannot be used (exit code 2)."""


class GateFailed(QcliError):
    """A `compare` quality gate failed (exit code 1). `report` holds every figure measured."""

    exit_code = 1

    def __init__(self, message: str, report=None) -> None:
        super().__init__(message)
        self.report = report


class InternalError(QcliError):
    """A bug in qcli (exit code 3): the message says what failed; --debug shows the traceback."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during quantize; `written` lists the files already in place (the output model is written
    atomically, so it is either complete and listed here, or absent)."""

    def __init__(self, written: list) -> None:
        super().__init__()
        self.written = list(written)


class NonFiniteValues(InputError):
    """A calibration batch holds NaN or +-inf; the caller adds the tensor's name to the message."""
