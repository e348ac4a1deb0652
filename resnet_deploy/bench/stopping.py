"""Stopping after SIGINT/SIGTERM: the safe-point check the measuring loops call, the record of where
the benchmark stopped (``results["interrupted"]``) and the exception that ends the command."""

from __future__ import annotations

from ..signals import Interrupted, StopRequest


class _StopMeasuring(BaseException):
    """Raised at a safe point after SIGINT/SIGTERM to abandon the measurement in progress.

    A BaseException so that no backend's ``except Exception`` can turn it into an error row.
    """


def _check_stop(stop: StopRequest | None) -> None:
    if stop is not None and stop.requested:
        raise _StopMeasuring


class BenchInterrupted(Interrupted):
    """The benchmark was stopped by SIGINT/SIGTERM; ``results_path`` holds what was measured (or is None)."""

    def __init__(self, signum: int, message: str, results_path=None) -> None:
        hint = (
            "rows and batch sizes marked 'interrupted' were not measured; run the command again for a complete benchmark"
            if results_path is not None
            else None
        )
        super().__init__(signum, message, hint=hint)
        self.results_path = results_path


def _interruption(stop: StopRequest, row: str, phase: str) -> dict:
    """``results["interrupted"]``: which signal stopped the benchmark, and where."""
    where = {
        "start": f"before row {row} was measured",
        "accuracy": f"during the accuracy pass of row {row}",
        "latency": f"during the latency sweep of row {row}",
        "after": f"after row {row} was measured",
    }[phase]
    return {
        "signal": int(stop.signal_number),
        "signal_name": stop.name,
        "row": row,
        "phase": phase,
        "message": f"interrupted by {stop.name} {where}",
    }


def raise_if_interrupted(results: dict, paths: dict | None = None) -> None:
    """:class:`BenchInterrupted` (exit code 128 + signal) when SIGINT/SIGTERM cut the benchmark short;
    call it after the partial results were written and shown."""
    interrupted = results.get("interrupted")
    if not interrupted:
        return
    where = ""
    if paths:
        where = f"; partial results written to {paths['results']} and {paths['markdown']}"
    raise BenchInterrupted(interrupted["signal"], interrupted["message"] + where, paths["results"] if paths else None)
