"""Latency: per batch size, warm-up, then timed iterations until the mean is stable (see the package
docstring); a sweep over batch sizes in which an out-of-memory batch ends the sweep."""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np

from .. import progress
from ..backends.base import NonFiniteOutputError, Runner, check_finite
from ..data import Normalization, normalize, to_tensor_images
from ..errors import UserError
from ..signals import StopRequest
from .memory import _free_device_memory, _MemoryProbe, is_out_of_memory
from .settings import BenchSettings
from .stopping import _check_stop, _StopMeasuring

log = logging.getLogger(__name__)


def latency_input(batch_size: int, images: np.ndarray | None, normalization: Normalization | None) -> np.ndarray:
    """A normalized float32 NCHW batch: real test images (tiled if needed) or seeded noise."""
    if images is None or normalization is None or len(images) == 0:
        return np.random.default_rng(0).standard_normal((batch_size, 3, 32, 32), dtype=np.float32)
    index = np.arange(batch_size) % len(images)
    return normalize(to_tensor_images(images[index]), normalization).numpy()


def measure_latency(runner: Runner, batch: np.ndarray, settings: BenchSettings, stop: StopRequest | None = None) -> dict:
    """Warm up, then time ``runner`` on ``batch`` until the figure is stable. The runner must be active.

    With ``stop``, a SIGINT/SIGTERM abandons the measurement after the iteration in progress
    (``_StopMeasuring``): a measurement is reported whole or not at all."""
    batch_size = int(batch.shape[0])
    copies_apply = runner.device != "cpu"
    include_copies = settings.include_copies or not copies_apply
    timed, timer = _timer(runner, batch, include_copies)
    with _MemoryProbe(runner) as memory:
        first_ms, output = timed()
        check_finite(runner.to_host(output), runner.name, f"latency run, batch size {batch_size}")
        _check_stop(stop)
        warmup_done = _warm_up(timed, settings, stop)
        samples = _sample(timed, settings, stop)
        peak = memory.peak_mb()
    return {
        "batch_size": batch_size,
        "status": "ok",
        "message": None,
        "iterations": len(samples),
        "warmup_iterations": warmup_done,
        "first_call_ms": first_ms,
        **_statistics(np.asarray(samples), batch_size),
        "peak_memory_mb": peak,
        "memory_kind": memory.kind,
        "timer": timer,
        "host_device_copies": ("included" if include_copies else "excluded") if copies_apply else "none (cpu)",
    }


def _timer(runner: Runner, batch: np.ndarray, include_copies: bool) -> tuple[Callable[[], tuple[float, object]], str]:
    """A function that runs one synchronised call and returns (milliseconds, output), and the timer's
    name: CUDA events on the runner's stream for GPU runners, ``perf_counter_ns`` otherwise. Without
    copies the input is staged on the device once, here."""
    stream = runner.cuda_stream
    staged = None if include_copies else runner.prepare(batch)

    def step():
        return runner.infer(batch) if include_copies else runner.run_prepared(staged)

    if stream is None:

        def timed() -> tuple[float, object]:
            begin = time.perf_counter_ns()
            output = step()
            runner.synchronize()
            return (time.perf_counter_ns() - begin) / 1e6, output

        return timed, "perf_counter_ns"
    import torch

    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)

    def timed_on_stream() -> tuple[float, object]:
        start_event.record(stream)
        output = step()
        end_event.record(stream)
        end_event.synchronize()
        return start_event.elapsed_time(end_event), output

    return timed_on_stream, "cuda_events"


def _warm_up(timed: Callable, settings: BenchSettings, stop: StopRequest | None) -> int:
    """Untimed calls until ``warmup_iterations`` and ``warmup_seconds`` are both reached; returns the
    number of warm-up calls, the first (already made) included."""
    warmup_done, warmup_start = 1, time.perf_counter()
    while warmup_done < settings.warmup_iterations or time.perf_counter() - warmup_start < settings.warmup_seconds:
        timed()
        warmup_done += 1
        _check_stop(stop)
    return warmup_done


def _sample(timed: Callable, settings: BenchSettings, stop: StopRequest | None) -> list[float]:
    """Timed iterations (ms) until min iterations and min time are reached and the relative standard
    error of the mean is under the target, or the time limit runs out."""
    samples: list[float] = []
    started = time.perf_counter()
    while True:
        samples.append(timed()[0])
        _check_stop(stop)
        elapsed = time.perf_counter() - started
        if len(samples) >= settings.min_iterations and elapsed >= settings.min_seconds:
            values = np.asarray(samples)
            rel_error = values.std(ddof=1) / values.mean() / math.sqrt(len(values)) if len(values) > 1 else 0.0
            if rel_error <= settings.target_rel_error or elapsed >= settings.max_seconds:
                return samples
        elif elapsed >= settings.max_seconds and len(samples) >= 3:
            return samples  # a very slow configuration: fewer samples rather than minutes per point


def _statistics(values: np.ndarray, batch_size: int) -> dict:
    mean = float(values.mean())
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": mean,
        "std_ms": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min_ms": float(values.min()),
        "images_per_sec": batch_size / (mean / 1000.0) if mean > 0 else None,
    }


def sweep_latency(
    runner: Runner,
    settings: BenchSettings,
    images: np.ndarray | None = None,
    normalization: Normalization | None = None,
    stop: StopRequest | None = None,
) -> list[dict]:
    """:func:`measure_latency` for each batch size (ascending). An out-of-memory batch ends the sweep
    with a message naming the largest batch that fitted; other per-batch failures stay in their entry.

    After a SIGINT/SIGTERM (``stop``), the batch size being measured and every later one get status
    ``interrupted``; the caller sees ``stop.requested``."""
    entries: list[dict] = []
    largest_ok: int | None = None
    oom_at: int | None = None
    with progress.bar(f"{runner.name} latency", total=len(settings.batch_sizes)) as bar:
        for batch_size in sorted(set(settings.batch_sizes)):
            if stop is not None and stop.requested:
                entries.append(_failed_entry(batch_size, "interrupted", f"not measured: the benchmark was interrupted by {stop.name} before this batch size"))
                continue
            if oom_at is not None:
                entries.append(_failed_entry(batch_size, "skipped", f"not tried: batch {oom_at} already ran out of memory"))
                bar.advance()
                continue
            try:
                entry = measure_latency(runner, latency_input(batch_size, images, normalization), settings, stop)
                largest_ok = batch_size
                status = f"bs {batch_size}: {entry['images_per_sec']:,.0f} img/s"
                log.info(
                    f"{runner.name} latency bs {batch_size}: {entry['images_per_sec']:,.0f} img/s, "
                    f"p50 {entry['p50_ms']:.3f} ms ({entry['iterations']} iterations)"
                )
            except (_StopMeasuring, Exception) as exc:  # noqa: BLE001 - any backend failure becomes this entry's message
                entry, status = _unmeasured_entry(exc, runner, batch_size, largest_ok, stop)
                if entry["status"] == "oom":
                    oom_at = batch_size
            entries.append(entry)
            bar.advance(status=status)
    return entries


def _unmeasured_entry(exc: BaseException, runner: Runner, batch_size: int, largest_ok: int | None,
                      stop: StopRequest | None) -> tuple[dict, str]:
    """The sweep entry (and progress status) for a batch size whose measurement raised ``exc``."""
    if isinstance(exc, _StopMeasuring):
        message = f"not measured: the benchmark was interrupted by {stop.name} during this measurement (its samples were discarded)"
        return _failed_entry(batch_size, "interrupted", message), f"bs {batch_size}: interrupted"
    if isinstance(exc, NonFiniteOutputError):
        return _failed_entry(batch_size, "nonfinite", str(exc)), f"bs {batch_size}: NaN/inf"
    if isinstance(exc, UserError):  # e.g. batch over a TensorRT profile's max
        return _failed_entry(batch_size, "error", str(exc)), f"bs {batch_size}: error"
    if not is_out_of_memory(exc):
        return _failed_entry(batch_size, "error", f"{type(exc).__name__}: {exc}"), f"bs {batch_size}: error"
    _free_device_memory()
    fitted = f"the largest batch that fitted was {largest_ok}" if largest_ok else "no batch size fitted"
    message = f"{runner.name} ran out of memory on {runner.device} at batch {batch_size}; {fitted}"
    log.info(message)
    return _failed_entry(batch_size, "oom", message), f"bs {batch_size}: OOM"


def _failed_entry(batch_size: int, status: str, message: str) -> dict:
    return {"batch_size": batch_size, "status": status, "message": message}
