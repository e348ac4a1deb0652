"""The row driver: every runner in turn (the baseline first), its accuracy pass then its latency
sweep; a failure stays in its row, and SIGINT/SIGTERM end the benchmark at the next safe point."""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Sequence

import logging
import numpy as np

from ..backends.base import BackendUnavailable, NonFiniteOutputError, Runner, SkippedRunner
from ..data import Normalization
from ..environment import cpu_competition, cpu_snapshot
from ..errors import UserError
from ..report import skipped_summary
from ..signals import StopRequest
from .accuracy import accuracy_metrics, predict
from .latency import _failed_entry, sweep_latency
from .memory import _free_device_memory, is_out_of_memory
from .settings import BenchSettings
from .stopping import _interruption, _StopMeasuring

log = logging.getLogger(__name__)


def run_benchmark(
    runners: Sequence[Runner | SkippedRunner],
    images: np.ndarray,
    labels: np.ndarray,
    normalization: Normalization,
    settings: BenchSettings,
    baseline: str = "pytorch-fp32",
    stop: StopRequest | None = None,
) -> dict:
    """Rows for every runner (the baseline first), with accuracy parity and latency sweeps.

    Returns ``{"baseline", "settings", "rows", "interrupted", "cpu_competition"}`` (the CPU time other
    processes took while the rows ran, see :func:`~resnet_deploy.environment.cpu_competition`);
    :func:`build_results` adds the environment. SIGINT/SIGTERM are caught while it runs (or by the
    caller's ``stop``): the benchmark ends at the next safe point and ``interrupted`` says where (None
    when it ran to the end).
    """
    settings.validate()
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise UserError(f"runner names must be unique, got {names}")
    ordered = sorted(runners, key=lambda r: r.name != baseline)
    if settings.accuracy and (not ordered or ordered[0].name != baseline or isinstance(ordered[0], SkippedRunner)):
        raise UserError(f"the baseline row {baseline!r} must be among the runners and able to run")
    with contextlib.ExitStack() as stack:
        if stop is None:
            stop = stack.enter_context(StopRequest())
        before = cpu_snapshot()
        rows, interrupted = _run_rows(ordered, images, labels, normalization, settings, baseline, stop)
        competition = cpu_competition(before, cpu_snapshot())
    _add_speedups(rows, baseline)
    return {"baseline": baseline, "settings": asdict(settings), "rows": rows, "interrupted": interrupted,
            "cpu_competition": competition}


def _row_header(runner: Runner | SkippedRunner) -> dict:
    row = {
        "name": runner.name,
        "backend": runner.backend,
        "precision": runner.precision,
        "device": runner.device,
        "status": "ok",
        "reason": None,
        "settings": {},
        "accuracy": None,
        "latency": [],
    }
    if isinstance(runner, SkippedRunner):
        row.update(status="skipped", reason=runner.reason)
    return row


def _run_rows(ordered, images, labels, normalization, settings: BenchSettings, baseline: str, stop: StopRequest) -> tuple[list[dict], dict | None]:
    reference: dict = {}  # the baseline row's "logits" and "metrics", once measured
    rows: list[dict] = []
    interrupted: dict | None = None
    not_run = skipped_summary([_row_header(r) for r in ordered if isinstance(r, SkippedRunner)])
    if not_run:
        log.info(not_run)  # one line, however many rows
    for runner in ordered:
        row = _row_header(runner)
        rows.append(row)
        if isinstance(runner, SkippedRunner):
            continue
        row["settings"] = runner.describe()
        if stop.requested:
            row.update(status="interrupted", reason=f"not run: the benchmark was interrupted by {stop.name} before this row")
            interrupted = interrupted or _interruption(stop, runner.name, "start")
            continue
        phase = _run_row(row, runner, images, labels, normalization, settings, baseline, stop, reference)
        if stop.requested and interrupted is None:
            interrupted = _interruption(stop, runner.name, phase if row["status"] == "interrupted" else "after")
        if runner.name == baseline and row["status"] not in ("ok", "interrupted") and settings.accuracy:
            raise UserError(f"the baseline {baseline} failed, so no row can be compared: {row['reason']}")
    if not any(row["status"] == "interrupted" for row in rows):
        return rows, None  # the signal came after the last measurement: nothing is missing
    log.info(f"{interrupted['message']}: rows and batch sizes marked interrupted were not measured")
    return rows, interrupted


def _run_row(row: dict, runner: Runner, images, labels, normalization, settings: BenchSettings, baseline: str,
             stop: StopRequest, reference: dict) -> str:
    """Activate ``runner`` and measure it into ``row``; a failure becomes the row's status and reason.
    Returns the phase reached (start, accuracy or latency)."""
    phase = "start"
    try:
        with runner:
            row["settings"] = runner.describe()  # activation fills in thread counts, providers, profiles
            if runner.max_batch_size is not None:
                row["max_batch_size"] = runner.max_batch_size
            if settings.accuracy:
                phase = "accuracy"
                _accuracy_pass(row, runner, images, labels, normalization, settings, baseline, stop, reference)
            if settings.latency:
                phase = "latency"
                _latency_pass(row, runner, images, normalization, settings, stop)
    except _StopMeasuring:  # raised by the accuracy pass only (the sweep handles its own)
        row.update(status="interrupted", reason=f"interrupted by {stop.name} during the accuracy pass: no figures for this row")
        if settings.latency and not row["latency"]:
            row["latency"] = [
                _failed_entry(b, "interrupted", f"not measured: the benchmark was interrupted by {stop.name}")
                for b in sorted(set(settings.batch_sizes))
            ]
    except BackendUnavailable as exc:
        row.update(status="skipped", reason=str(exc))
        log.info(f"skipped {runner.name}: {exc}")
    except NonFiniteOutputError as exc:
        row.update(status="nonfinite", reason=str(exc))
        log.info(f"error: {exc}")
    except Exception as exc:  # noqa: BLE001 - one broken backend must not end the whole benchmark
        reason = _error_reason(exc, runner, settings)
        row.update(status="error", reason=reason)
        log.info(f"error in {runner.name}: {reason}")
    return phase


def _accuracy_pass(row: dict, runner: Runner, images, labels, normalization, settings: BenchSettings, baseline: str,
                   stop: StopRequest, reference: dict) -> None:
    logits = predict(runner, images, normalization, settings.accuracy_batch_size, stop)
    row["accuracy"] = accuracy_metrics(logits, labels, reference.get("logits"), reference.get("metrics"))
    row["accuracy"]["batch_size"] = min(settings.accuracy_batch_size, runner.max_batch_size or settings.accuracy_batch_size)
    if runner.name == baseline:
        reference.update(logits=logits, metrics=row["accuracy"])
    log.info(f"{runner.name}: top-1 {row['accuracy']['top1']:.2f}%  agreement {row['accuracy']['agreement']:.2f}%")


def _latency_pass(row: dict, runner: Runner, images, normalization, settings: BenchSettings, stop: StopRequest) -> None:
    row["latency"] = sweep_latency(runner, settings, images, normalization, stop)
    not_measured = [e["batch_size"] for e in row["latency"] if e["status"] == "interrupted"]
    if not_measured:
        row.update(
            status="interrupted",
            reason=f"interrupted by {stop.name} during the latency sweep: batch sizes {', '.join(map(str, not_measured))} not measured",
        )


def _error_reason(exc: Exception, runner: Runner, settings: BenchSettings) -> str:
    """The reason an error row gives; an out-of-memory accuracy pass first frees the device's cache."""
    if is_out_of_memory(exc):
        _free_device_memory()
        return f"{runner.name} ran out of memory on {runner.device} in the accuracy pass at batch {settings.accuracy_batch_size}; try a smaller --accuracy-batch-size"
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def _add_speedups(rows: list[dict], baseline: str) -> None:
    reference = {}
    for row in rows:
        if row["name"] == baseline:
            reference = {e["batch_size"]: e.get("images_per_sec") for e in row["latency"] if e["status"] == "ok"}
    for row in rows:
        for entry in row["latency"]:
            base = reference.get(entry["batch_size"])
            ours = entry.get("images_per_sec")
            entry["speedup_vs_baseline"] = ours / base if (entry["status"] == "ok" and base and ours) else None
