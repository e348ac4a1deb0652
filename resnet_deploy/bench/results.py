"""The results document: what :func:`~.rows.run_benchmark` measured plus the run's identity, the
environment (:func:`resnet_deploy.environment.collect_environment`), the model and the dataset."""

from __future__ import annotations

from typing import Iterable

from ..environment import collect_environment
from .settings import RESULTS_FORMAT, RESULTS_VERSION


def build_results(
    measured: dict,
    *,
    run_name: str,
    model: dict,
    dataset: dict,
    command: Iterable[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """The full results document (see report.RESULTS_SCHEMA)."""
    from datetime import datetime, timezone

    environment = collect_environment()
    # Measured over the rows' own window (run_benchmark), unlike the load average taken here.
    environment["hardware"]["cpu_competition"] = measured.get("cpu_competition")
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "run_name": run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else None,
        **environment,
        "model": model,
        "dataset": dataset,
        "baseline": measured["baseline"],
        "settings": measured["settings"],
        "rows": measured["rows"],
        "verification": None,
        # None, or which signal stopped the run and where: the rows then hold partial figures.
        "interrupted": measured.get("interrupted"),
    }
    if extra:
        results.update(extra)
    return results
