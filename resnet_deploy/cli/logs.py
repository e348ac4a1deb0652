"""Where status messages go on the command line, and -q/-v as logging levels.

The library reports progress through standard ``logging`` (each module logs to
``logging.getLogger(__name__)``, all under the ``resnet_deploy`` logger), so a program that imports it
captures or silences those messages the usual way. The CLI is what shows them: one handler on the
``resnet_deploy`` logger writes each message as the bare line it is (rich's handler on a terminal), and
the logger's level says which ones: INFO by default, WARNING under -q, $RESNET_DEPLOY_QUIET=1 or in a
non-rank-0 process.
"""

from __future__ import annotations

import logging
import sys

from .. import progress

PROJECT = "resnet_deploy"  # the logger every module of the package logs under


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per invocation)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _outside_project(record: logging.LogRecord) -> bool:
    return record.name != PROJECT and not record.name.startswith(PROJECT + ".")


def install_handler() -> None:
    """The handler for the package's messages, once per process, and the level from the environment
    ($RESNET_DEPLOY_QUIET), again at every invocation (-q/-v, parsed after this, change it)."""
    logger = logging.getLogger(PROJECT)
    if not any(getattr(handler, "_resnet_deploy", False) for handler in logger.handlers):
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.highlighter import NullHighlighter
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(
                console=Console(stderr=True), show_time=False, show_level=False, show_path=False, markup=False,
                highlighter=NullHighlighter(),
            )
        else:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))  # the line as the module wrote it
        handler._resnet_deploy = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if progress.enabled() else logging.WARNING)


def quiet() -> None:
    """-q, and every process but rank 0: no progress bars, no status lines (warnings still show)."""
    progress.set_enabled(False)
    logging.getLogger(PROJECT).setLevel(logging.WARNING)


def verbose() -> None:
    """-v: bars and status lines even under $RESNET_DEPLOY_QUIET=1, and the INFO messages of the
    libraries underneath (torch, onnx...), each with its level and logger name."""
    progress.set_enabled(True)
    logging.getLogger(PROJECT).setLevel(logging.INFO)
    root = logging.getLogger()
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_outside_project)  # the package's own lines already have their handler
        root.addHandler(handler)
    root.setLevel(logging.INFO)
