"""Latency, throughput and accuracy parity of every runner, measured the same way for all.

Plain functions looping over :class:`~resnet_deploy.backends.base.Runner` objects::

    settings = BenchSettings(batch_sizes=[1, 8, 32, 128, 256])
    results = run_benchmark(runners, images, labels, normalization, settings)
    failures = verify_results(results, Thresholds())

Latency: per batch size, warm-up iterations, then timed iterations until both ``min_iterations`` and
``min_seconds`` are reached and the relative standard error of the mean is under ``target_rel_error``
(or ``max_seconds`` runs out). Each iteration is synchronised: GPU runners are timed with CUDA events on
their stream, CPU runners with ``time.perf_counter_ns``. ``include_copies`` decides whether the
host->device input copy and device->host output copy are inside the timed region (always true on the
CPU, where there is nothing to copy). Throughput is ``batch / mean latency``.

Accuracy: the whole test split through each runner at a fixed batch size (capped at a TensorRT
engine's max batch); top-1/top-5 with ``evaluation.classification_metrics``; parity against the
baseline row (FP32 PyTorch eager): top-1 agreement and max/mean absolute logit difference.

Failures stay in their row: an out-of-memory batch size ends the sweep for that runner with the largest
batch that fitted; NaN/inf outputs are reported with the runner and batch; a runner that cannot run
here (no GPU, no TensorRT) is a skipped row with the reason.

SIGINT/SIGTERM (:mod:`resnet_deploy.signals`) stop the benchmark at the next timed iteration or
accuracy batch: the measurement in progress is discarded (never reported as ok), what was measured
is kept, and every row and batch size not measured gets status ``interrupted``. The results say so
(``results["interrupted"]``: signal, row, phase) and :func:`benchmark_artifacts` still writes them;
:func:`raise_if_interrupted` then ends the command with exit code 128 + signal.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from . import progress
from .backends.base import BackendUnavailable, NonFiniteOutputError, Runner, SkippedRunner, check_finite, physical_cores
from .data import Normalization, normalize, to_tensor_images
from .environment import cpu_model
from .errors import UserError, VerificationError
from .signals import Interrupted, StopRequest

RESULTS_FORMAT = "resnet-deploy/bench"
RESULTS_VERSION = 1


@dataclass
class BenchSettings:
    """How a benchmark measures; recorded in the results."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128, 256])
    include_copies: bool = True
    accuracy_batch_size: int = 500
    warmup_iterations: int = 5
    warmup_seconds: float = 0.3
    min_iterations: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 5.0
    target_rel_error: float = 0.01
    latency: bool = True
    accuracy: bool = True

    def validate(self) -> None:
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise UserError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        if self.accuracy_batch_size <= 0:
            raise UserError(f"--accuracy-batch-size must be positive, got {self.accuracy_batch_size}")
        if self.min_iterations < 1 or self.warmup_iterations < 0:
            raise UserError("--min-iterations must be >= 1 and --warmup >= 0")
        if not (0 <= self.min_seconds <= self.max_seconds):
            raise UserError(f"--min-time ({self.min_seconds}) must be between 0 and --max-time ({self.max_seconds})")


@dataclass
class Thresholds:
    """``--verify`` gates. Agreement is top-1 agreement with FP32 PyTorch in percent; the int8 drop is
    FP32 PyTorch top-1 minus the row's top-1, in percentage points."""

    fp32_min_agreement: float = 100.0
    fp16_min_agreement: float = 99.9
    int8_max_top1_drop: float = 0.5

    def validate(self) -> None:
        # A NaN threshold would pass every row (any comparison with NaN is False): refuse it.
        for option, value in (("--min-fp32-agreement", self.fp32_min_agreement), ("--min-fp16-agreement", self.fp16_min_agreement)):
            if not (0.0 <= value <= 100.0):
                raise UserError(f"{option} must be a percentage between 0 and 100, got {value}")
        if not (0.0 <= self.int8_max_top1_drop <= 100.0):
            raise UserError(f"--max-int8-drop must be between 0 and 100 percentage points, got {self.int8_max_top1_drop}")


# ============================================================================================ stopping


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


# ============================================================================================ latency


def _cuda_oom_types() -> tuple[type, ...]:
    import torch

    return tuple({getattr(torch, "OutOfMemoryError", RuntimeError), getattr(torch.cuda, "OutOfMemoryError", RuntimeError)} - {RuntimeError})


_OOM_MARKERS = ("out of memory", "failed to allocate memory", "cuda_error_out_of_memory", "cudaerrormemoryallocation", "bad_alloc")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or an ONNX Runtime / TensorRT error whose message says so."""
    if isinstance(error, _cuda_oom_types()) or isinstance(error, MemoryError):
        return True
    return any(marker in str(error).lower() for marker in _OOM_MARKERS)


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _MemoryProbe:
    """Peak memory over a measurement: torch's CUDA allocator peak on GPUs, process peak RSS on the CPU.

    On Linux the peak RSS is reset first (``/proc/self/clear_refs``), so the figure is the peak during
    the measurement, still including the resident dataset and interpreter.
    """

    def __init__(self, runner: Runner) -> None:
        self.kind = runner.peak_memory_kind()
        self.device = runner.device

    def __enter__(self) -> "_MemoryProbe":
        if self.kind == "cuda_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        pass

    def peak_mb(self) -> float | None:
        if self.kind == "cuda_allocated":
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except (ImportError, OSError):
            return None


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
    stream = runner.cuda_stream
    copies_apply = runner.device != "cpu"
    include_copies = settings.include_copies or not copies_apply
    staged = None if include_copies else runner.prepare(batch)

    def step():
        return runner.infer(batch) if include_copies else runner.run_prepared(staged)

    if stream is not None:
        import torch

        start_event = torch.cuda.Event(enable_timing=True)
        end_event = torch.cuda.Event(enable_timing=True)

        def timed() -> tuple[float, object]:
            start_event.record(stream)
            output = step()
            end_event.record(stream)
            end_event.synchronize()
            return start_event.elapsed_time(end_event), output

    else:

        def timed() -> tuple[float, object]:
            begin = time.perf_counter_ns()
            output = step()
            runner.synchronize()
            return (time.perf_counter_ns() - begin) / 1e6, output

    with _MemoryProbe(runner) as memory:
        first_ms, output = timed()
        check_finite(runner.to_host(output), runner.name, f"latency run, batch size {batch_size}")
        _check_stop(stop)
        warmup_done, warmup_start = 1, time.perf_counter()
        while warmup_done < settings.warmup_iterations or time.perf_counter() - warmup_start < settings.warmup_seconds:
            timed()
            warmup_done += 1
            _check_stop(stop)
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
                    break
            elif elapsed >= settings.max_seconds and len(samples) >= 3:
                break  # a very slow configuration: fewer samples rather than minutes per point
        peak = memory.peak_mb()
    values = np.asarray(samples)
    mean = float(values.mean())
    return {
        "batch_size": batch_size,
        "status": "ok",
        "message": None,
        "iterations": len(values),
        "warmup_iterations": warmup_done,
        "first_call_ms": first_ms,
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": mean,
        "std_ms": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min_ms": float(values.min()),
        "images_per_sec": batch_size / (mean / 1000.0) if mean > 0 else None,
        "peak_memory_mb": peak,
        "memory_kind": memory.kind,
        "timer": "cuda_events" if stream is not None else "perf_counter_ns",
        "host_device_copies": ("included" if include_copies else "excluded") if copies_apply else "none (cpu)",
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
                progress.info(
                    f"{runner.name} latency bs {batch_size}: {entry['images_per_sec']:,.0f} img/s, "
                    f"p50 {entry['p50_ms']:.3f} ms ({entry['iterations']} iterations)"
                )
            except _StopMeasuring:
                message = f"not measured: the benchmark was interrupted by {stop.name} during this measurement (its samples were discarded)"
                entry, status = _failed_entry(batch_size, "interrupted", message), f"bs {batch_size}: interrupted"
            except NonFiniteOutputError as exc:
                entry, status = _failed_entry(batch_size, "nonfinite", str(exc)), f"bs {batch_size}: NaN/inf"
            except UserError as exc:  # e.g. batch over a TensorRT profile's max
                entry, status = _failed_entry(batch_size, "error", str(exc)), f"bs {batch_size}: error"
            except Exception as exc:  # noqa: BLE001 - any backend failure becomes this entry's message
                if not is_out_of_memory(exc):
                    entry, status = _failed_entry(batch_size, "error", f"{type(exc).__name__}: {exc}"), f"bs {batch_size}: error"
                else:
                    _free_device_memory()
                    oom_at = batch_size
                    fitted = f"the largest batch that fitted was {largest_ok}" if largest_ok else "no batch size fitted"
                    message = f"{runner.name} ran out of memory on {runner.device} at batch {batch_size}; {fitted}"
                    progress.info(message)
                    entry, status = _failed_entry(batch_size, "oom", message), f"bs {batch_size}: OOM"
            entries.append(entry)
            bar.advance(status=status)
    return entries


def _failed_entry(batch_size: int, status: str, message: str) -> dict:
    return {"batch_size": batch_size, "status": status, "message": message}


# ============================================================================================ accuracy


def predict(
    runner: Runner,
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int = 500,
    stop: StopRequest | None = None,
) -> np.ndarray:
    """Float32 logits of ``runner`` over uint8 NHWC ``images`` in order; NaN/inf raise with the batch.

    With ``stop``, a SIGINT/SIGTERM abandons the pass after the batch in progress (``_StopMeasuring``)."""
    if runner.max_batch_size is not None:
        batch_size = min(batch_size, runner.max_batch_size)
    outputs = []
    count = len(images)
    with progress.bar(f"{runner.name} accuracy", total=count) as bar:
        for index, start in enumerate(range(0, count, batch_size)):
            _check_stop(stop)
            batch = normalize(to_tensor_images(images[start : start + batch_size]), normalization)
            logits = runner.infer(batch)
            check_finite(logits, runner.name, f"accuracy pass, batch {index} of size {len(batch)} (images {start}..{start + len(batch) - 1})")
            outputs.append(logits)
            bar.advance(len(batch))
    return np.concatenate(outputs)


def parity_metrics(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Agreement of top-1 predictions (percent) and absolute logit differences against ``reference``."""
    logits, reference = np.asarray(logits, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if logits.shape != reference.shape:
        raise ValueError(f"logit shapes differ: {logits.shape} vs reference {reference.shape}")
    diff = np.abs(logits - reference)
    return {
        "agreement": float(100.0 * np.mean(logits.argmax(1) == reference.argmax(1))),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
    }


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray, baseline_logits: np.ndarray | None, baseline: dict | None) -> dict:
    """classification_metrics plus deltas and parity against the baseline row."""
    import torch

    from .evaluation import classification_metrics

    metrics = classification_metrics(torch.from_numpy(np.asarray(logits, dtype=np.float32)), labels)
    if baseline_logits is not None and baseline is not None:
        metrics["delta_top1"] = metrics["top1"] - baseline["top1"]
        metrics["delta_top5"] = metrics["top5"] - baseline["top5"]
        metrics.update(parity_metrics(logits, baseline_logits))
    else:
        metrics.update({"delta_top1": 0.0, "delta_top5": 0.0, "agreement": 100.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0})
    return metrics


# ============================================================================================ driver


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

    Returns ``{"baseline", "settings", "rows", "interrupted"}``; :func:`build_results` adds the
    environment. SIGINT/SIGTERM are caught while it runs (or by the caller's ``stop``): the benchmark
    ends at the next safe point and ``interrupted`` says where (None when it ran to the end).
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
        rows, interrupted = _run_rows(ordered, images, labels, normalization, settings, baseline, stop)
    _add_speedups(rows, baseline)
    return {"baseline": baseline, "settings": asdict(settings), "rows": rows, "interrupted": interrupted}


def _run_rows(ordered, images, labels, normalization, settings: BenchSettings, baseline: str, stop: StopRequest) -> tuple[list[dict], dict | None]:
    baseline_logits = baseline_metrics = None
    rows: list[dict] = []
    interrupted: dict | None = None
    for runner in ordered:
        row = _row_header(runner)
        rows.append(row)
        if isinstance(runner, SkippedRunner):
            progress.info(f"skipped {runner.name}: {runner.reason}")
            continue
        row["settings"] = runner.describe()
        if stop.requested:
            row.update(status="interrupted", reason=f"not run: the benchmark was interrupted by {stop.name} before this row")
            interrupted = interrupted or _interruption(stop, runner.name, "start")
            continue
        phase = "start"
        try:
            with runner:
                row["settings"] = runner.describe()  # activation fills in thread counts, providers, profiles
                if runner.max_batch_size is not None:
                    row["max_batch_size"] = runner.max_batch_size
                if settings.accuracy:
                    phase = "accuracy"
                    logits = predict(runner, images, normalization, settings.accuracy_batch_size, stop)
                    row["accuracy"] = accuracy_metrics(logits, labels, baseline_logits, baseline_metrics)
                    row["accuracy"]["batch_size"] = min(settings.accuracy_batch_size, runner.max_batch_size or settings.accuracy_batch_size)
                    if runner.name == baseline:
                        baseline_logits, baseline_metrics = logits, row["accuracy"]
                    progress.info(f"{runner.name}: top-1 {row['accuracy']['top1']:.2f}%  agreement {row['accuracy']['agreement']:.2f}%")
                if settings.latency:
                    phase = "latency"
                    row["latency"] = sweep_latency(runner, settings, images, normalization, stop)
                    not_measured = [e["batch_size"] for e in row["latency"] if e["status"] == "interrupted"]
                    if not_measured:
                        row.update(
                            status="interrupted",
                            reason=f"interrupted by {stop.name} during the latency sweep: batch sizes {', '.join(map(str, not_measured))} not measured",
                        )
        except _StopMeasuring:  # raised by the accuracy pass only (the sweep handles its own)
            row.update(status="interrupted", reason=f"interrupted by {stop.name} during the accuracy pass: no figures for this row")
            if settings.latency and not row["latency"]:
                row["latency"] = [
                    _failed_entry(b, "interrupted", f"not measured: the benchmark was interrupted by {stop.name}")
                    for b in sorted(set(settings.batch_sizes))
                ]
        except BackendUnavailable as exc:
            row.update(status="skipped", reason=str(exc))
            progress.info(f"skipped {runner.name}: {exc}")
        except NonFiniteOutputError as exc:
            row.update(status="nonfinite", reason=str(exc))
            progress.info(f"error: {exc}")
        except Exception as exc:  # noqa: BLE001 - one broken backend must not end the whole benchmark
            if is_out_of_memory(exc):
                _free_device_memory()
                reason = f"{runner.name} ran out of memory on {runner.device} in the accuracy pass at batch {settings.accuracy_batch_size}; try a smaller --accuracy-batch-size"
            else:
                reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            row.update(status="error", reason=reason)
            progress.info(f"error in {runner.name}: {reason}")
        if stop.requested and interrupted is None:
            interrupted = _interruption(stop, runner.name, phase if row["status"] == "interrupted" else "after")
        if runner.name == baseline and row["status"] not in ("ok", "interrupted") and settings.accuracy:
            raise UserError(f"the baseline {baseline} failed, so no row can be compared: {row['reason']}")
    if not any(row["status"] == "interrupted" for row in rows):
        return rows, None  # the signal came after the last measurement: nothing is missing
    progress.info(f"{interrupted['message']}: rows and batch sizes marked interrupted were not measured")
    return rows, interrupted


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


# ============================================================================================ verify


def verify_results(results: dict, thresholds: Thresholds) -> list[dict]:
    """Rows that miss a threshold (empty list: all pass). Skipped rows are not failures; errors are."""
    failures = []
    baseline = results["baseline"]
    for row in results["rows"]:
        name = row["name"]
        if row["status"] == "skipped" or name == baseline:
            continue
        if row["status"] != "ok":
            failures.append(_failure(name, "ran", row["status"], "ok", f"{name}: {row['status']}: {row['reason']}"))
            continue
        for entry in row["latency"]:
            if entry["status"] == "nonfinite":
                failures.append(_failure(name, "finite outputs", "NaN/inf", "finite", entry["message"]))
        accuracy = row.get("accuracy")
        if accuracy is None:
            continue
        precision = row["precision"]
        if precision == "fp32" and accuracy["agreement"] < thresholds.fp32_min_agreement:
            failures.append(
                _failure(name, "top-1 agreement", accuracy["agreement"], thresholds.fp32_min_agreement,
                         f"{name}: top-1 agreement with FP32 PyTorch {accuracy['agreement']:.2f}% < {thresholds.fp32_min_agreement}%")
            )
        elif precision in ("fp16", "bf16") and accuracy["agreement"] < thresholds.fp16_min_agreement:
            failures.append(
                _failure(name, "top-1 agreement", accuracy["agreement"], thresholds.fp16_min_agreement,
                         f"{name}: top-1 agreement with FP32 PyTorch {accuracy['agreement']:.2f}% < {thresholds.fp16_min_agreement}%")
            )
        elif precision == "int8" and -accuracy["delta_top1"] > thresholds.int8_max_top1_drop:
            failures.append(
                _failure(name, "top-1 drop", -accuracy["delta_top1"], thresholds.int8_max_top1_drop,
                         f"{name}: top-1 drop {-accuracy['delta_top1']:.2f} points > {thresholds.int8_max_top1_drop} (top-1 {accuracy['top1']:.2f}% vs FP32 PyTorch {accuracy['top1'] - accuracy['delta_top1']:.2f}%)")
            )
    return failures


def _failure(row: str, check: str, value, threshold, message: str) -> dict:
    return {"row": row, "check": check, "value": value, "threshold": threshold, "message": message}


def apply_verification(results: dict, thresholds: Thresholds) -> dict:
    """Add ``results["verification"]``; the caller decides whether failures end the command."""
    if not any(row.get("accuracy") for row in results["rows"]):
        raise UserError("--verify needs the accuracy pass; drop --no-accuracy")
    failures = verify_results(results, thresholds)
    results["verification"] = {"thresholds": asdict(thresholds), "passed": not failures, "failures": failures}
    return results["verification"]


def raise_if_failed(results: dict) -> None:
    verification = results.get("verification")
    if verification and not verification["passed"]:
        lines = [failure["message"] for failure in verification["failures"]]
        raise VerificationError(f"{len(lines)} row(s) missed a threshold:\n  " + "\n  ".join(lines))


# ============================================================================================ environment


def collect_environment() -> dict:
    """Hardware and software the figures were measured on."""
    import numpy
    import torch

    hardware = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        # Other processes competing for the cores distort CPU figures: recorded so a reader can judge.
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            hardware["gpus"].append(
                {
                    "name": props.name,
                    "compute_capability": f"{props.major}.{props.minor}",
                    "memory_gb": round(props.total_memory / 2**30, 1),
                }
            )
    software = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "numpy": numpy.__version__,
        "onnxruntime": None,
        "onnxruntime_providers": [],
        "tensorrt": None,
        "openvino": None,
    }
    try:
        import onnxruntime

        software["onnxruntime"] = onnxruntime.__version__
        software["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        from .backends.tensorrt import tensorrt_version

        software["tensorrt"] = tensorrt_version()
    except Exception:  # noqa: BLE001 - absent TensorRT is normal; the rows say why they were skipped
        pass
    from .backends.openvino import openvino_version

    software["openvino"] = openvino_version()
    from . import __version__

    software["resnet_deploy"] = __version__
    return {"hardware": hardware, "software": software}


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


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

    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "run_name": run_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else None,
        **collect_environment(),
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


# ============================================================================================ one call


def benchmark_artifacts(
    dataset,
    options,
    settings: BenchSettings,
    *,
    run_name: str,
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    export_dirs: Sequence[str | os.PathLike] = (),
    quantized_dirs: Sequence[str | os.PathLike] = (),
    thresholds: Thresholds | None = None,
    command: Iterable[str] | None = None,
    extra: dict | None = None,
) -> tuple[dict, dict]:
    """Bench a checkpoint and its artifacts on ``dataset``'s test split and write the report.

    ``options`` is a :class:`~resnet_deploy.backends.RunnerOptions`. ``export_dirs``: export directories
    (manifest.json) of this checkpoint; ``quantized_dirs``: quantize artifacts for PyTorch int8 rows. The
    checkpoint defaults to the one the first export manifest names. With ``thresholds`` the results carry
    a verification verdict; the caller raises on failure (``raise_if_failed``) after the report is
    written, so a failing run still leaves its evidence. Returns (results, paths written).

    SIGINT/SIGTERM are caught from here on: the benchmark stops at the next safe point and what was
    measured is written like a full run, with ``results["interrupted"]`` set (and no verification:
    the rows are incomplete). The caller then ends with :func:`raise_if_interrupted`, as it does with
    :func:`raise_if_failed`. If nothing at all was measured, nothing is written (an earlier run's
    results stay) and :class:`BenchInterrupted` is raised here. A signal after the last measurement
    loses nothing: the run finishes as if it had not come.
    """
    from .fileio import ensure_writable_dir

    settings.validate()
    output_dir = ensure_writable_dir(output_dir, what="benchmark output directory")
    with StopRequest() as stop:
        return _benchmark_artifacts(
            dataset, options, settings, stop, run_name=run_name, output_dir=output_dir, checkpoint=checkpoint,
            export_dirs=export_dirs, quantized_dirs=quantized_dirs, thresholds=thresholds, command=command, extra=extra,
        )


def _benchmark_artifacts(dataset, options, settings: BenchSettings, stop: StopRequest, *, run_name, output_dir, checkpoint,
                         export_dirs, quantized_dirs, thresholds, command, extra) -> tuple[dict, dict]:
    from pathlib import Path

    from .backends import build_runners, load_export_manifest
    from .checkpoint import check_dataset_matches, load_checkpoint
    from .report import write_report

    exports = [(Path(d), load_export_manifest(d)) for d in export_dirs]
    if checkpoint is None:
        if not exports:
            raise UserError("give a checkpoint (--checkpoint) or an export directory (--export) whose manifest names one")
        first_dir, first = exports[0]
        checkpoint = Path(first["checkpoint"]["path"])
        if not checkpoint.is_file() and (first_dir / checkpoint).is_file():
            checkpoint = first_dir / checkpoint
        if not checkpoint.is_file():
            raise UserError(f"the checkpoint {checkpoint} named by {first_dir}/manifest.json is not there", hint="pass --checkpoint")
    loaded = load_checkpoint(checkpoint)
    for export_dir, manifest in exports:
        if manifest.get("checkpoint", {}).get("sha256") not in (None, loaded.sha256):
            raise UserError(
                f"{export_dir} was exported from a different checkpoint than {checkpoint} (sha256 differs)",
                hint="bench the checkpoint the export was made from, or export this one",
            )
    check_dataset_matches(loaded, dataset.classes, dataset.name)
    runners = build_runners(loaded.model, options, exports=exports, quantized=list(quantized_dirs), checkpoint=loaded.path)
    measured = run_benchmark(runners, dataset.test_images, dataset.test_labels, loaded.normalization, settings, stop=stop)
    interrupted = measured["interrupted"]
    if interrupted is not None and not _anything_measured(measured["rows"]):
        raise BenchInterrupted(
            interrupted["signal"],
            f"interrupted by {interrupted['signal_name']} before anything was measured; nothing written "
            f"(an earlier report in {output_dir} is left as it was)",
        )
    results = build_results(
        measured,
        run_name=run_name,
        model={
            "spec": loaded.spec.to_dict(),
            "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256},
            "num_classes": loaded.spec.num_classes,
            "export_dirs": [str(d) for d, _ in exports],
            "quantized_dirs": [str(d) for d in quantized_dirs],
        },
        dataset={"name": dataset.name, "split": "test", "size": int(len(dataset.test_images)), "source": dataset.source},
        command=command,
        extra=extra,
    )
    if thresholds is not None and interrupted is None:
        apply_verification(results, thresholds)
    paths = write_report(results, output_dir)
    return results, paths


def _anything_measured(rows: list[dict]) -> bool:
    return any(row.get("accuracy") or any(e["status"] == "ok" for e in row.get("latency", [])) for row in rows)


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
