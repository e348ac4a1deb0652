"""Graceful stop on SIGINT / SIGTERM for long jobs (training, QAT, benchmarks).

A long job must not lose hours of work to Ctrl-C or to a scheduler's SIGTERM (``kill``, Slurm,
Kubernetes, systemd all send SIGTERM first). The pattern every stage uses::

    with StopRequest() as stop:
        for item in work:
            do(item)                              # never cut in the middle
            if stop.signal_number is not None:    # a safe point: state is consistent here
                save_what_was_done()
                raise SomeInterrupted(stop.signal_number, where_it_was_saved)

The handler only sets a flag, so the work in progress (a training batch, a timed measurement)
finishes or is discarded as a whole by the caller; nothing is half-written. A second signal while
the first is being honoured stops at once (``KeyboardInterrupt``, exit 130), for a user who does not
want to wait. :class:`Interrupted` is a ``UserError`` whose exit code is 128 + the signal number
(130 for SIGINT, 143 for SIGTERM), as shells report a process killed by that signal.
"""

from __future__ import annotations

import signal
from typing import Any

from .errors import UserError

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``2`` -> ``"SIGINT"``; the number as text for a signal Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """Context manager: while inside it, SIGINT and SIGTERM set ``signal_number`` instead of stopping
    the process; the previous handlers come back on exit.

    Outside the main thread (where Python cannot install handlers) it leaves signals alone and
    ``signal_number`` stays None.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for signum in HANDLED_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal_number is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_number = signum

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def name(self) -> str | None:
        return signal_name(self.signal_number) if self.signal_number is not None else None

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class Interrupted(UserError):
    """A job stopped by SIGINT/SIGTERM after saving what it had done; exit code 128 + signal."""

    def __init__(self, signum: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signal_number = signum
        self.exit_code = 128 + signum
