"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (option, file, data), not a bug: shown without a traceback.

    ``exit_code`` is 2 for bad input, as click uses for usage errors.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class MissingDependencyError(UserError):
    """An optional package (TensorRT, onnxruntime-gpu, torchao, ...) is not installed."""

    def __init__(self, package: str, install: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs {package}, which is not installed", hint=f"install it with: {install}")
        self.package = package


class VerificationError(Exception):
    """A parity or accuracy check failed. Exit code 1: the tool worked, the model did not pass."""

    exit_code = 1
