"""The written model must pass onnx.checker's full check, or, when the input itself does not, the basic one; a
failure is the input's (exit 2) or qcli's (exit 3), never a model saved anyway."""

from __future__ import annotations

from pathlib import Path

import onnx

from qcli.core.errors import InputError, InternalError
from qcli.io.model_io import check


def check_output(model: onnx.ModelProto, source: Path) -> bool:
    """The output must pass onnx.checker's full check, or, when the input itself does not, the basic one.
    Returns whether the full check was applied."""
    try:
        check(model, True)
        return True
    except onnx.checker.ValidationError as full_error:
        try:
            onnx.checker.check_model(str(source), full_check=True)
            input_passes = True
        except onnx.checker.ValidationError:
            input_passes = False
        try:
            if input_passes:
                raise full_error
            check(model, False)
        except onnx.checker.ValidationError as e:
            reason = " ".join(str(e).split())[:240]
            if not input_passes and not _passes_basic(source):
                raise InputError(
                    f"{source.name} itself fails onnx.checker, and so does the model made from it ({reason}); "
                    "nothing was written: re-export the model so that onnx.checker.check_model accepts it"
                ) from e
            raise InternalError(
                f"internal error: the quantized model fails onnx.checker ({reason}); please report it with the "
                "model; meanwhile --exclude with the node that message names keeps that node float"
            ) from e
        return False


def _passes_basic(source: Path) -> bool:
    try:
        onnx.checker.check_model(str(source))
        return True
    except onnx.checker.ValidationError:
        return False
