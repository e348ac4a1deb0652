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
here (no GPU, no TensorRT) is a skipped row with the reason (summed up in one line by the report and
the console).

SIGINT/SIGTERM (:mod:`resnet_deploy.signals`) stop the benchmark at the next timed iteration or
accuracy batch: the measurement in progress is discarded (never reported as ok), what was measured
is kept, and every row and batch size not measured gets status ``interrupted``. The results say so
(``results["interrupted"]``: signal, row, phase) and :func:`benchmark_artifacts` still writes them;
:func:`raise_if_interrupted` then ends the command with exit code 128 + signal.

The modules, one job each (imports run down this list, never up):

``settings``  BenchSettings, Thresholds, the results format tag
``stopping``  the safe-point check, ``results["interrupted"]``, BenchInterrupted, raise_if_interrupted
``memory``    peak-memory probe, out-of-memory recognition
``latency``   latency_input, measure_latency, sweep_latency
``accuracy``  predict, parity_metrics (:func:`resnet_deploy.compare.compare_logits`), accuracy_metrics
``artifacts`` export manifests -> the files the rows run (load_export_manifest, merge_exports, ExportedFile)
``runners``   build_runners: the rows (runners and skips) from the model, quantize artifacts and those files
``rows``      run_benchmark: the row driver
``verify``    verify_results, apply_verification, raise_if_failed
``results``   build_results (environment from :mod:`resnet_deploy.environment`)
``run``       benchmark_artifacts: checkpoint + artifacts -> runners -> results -> report

Every name below is importable from ``resnet_deploy.bench`` as before the split (those of the modules
that import torch on first use, as in ``resnet_deploy.backends``). To replace one in a test, patch it
where it is used (e.g. ``resnet_deploy.bench.latency.measure_latency`` for the sweep),
not here: patching ``resnet_deploy.bench.X`` changes only this namespace.
"""

from __future__ import annotations

import importlib

from .settings import RESULTS_FORMAT, RESULTS_VERSION, BenchSettings, Thresholds
from .stopping import BenchInterrupted, raise_if_interrupted

# The other names' modules import torch: loaded on first use (PEP 562), so that the CLI can build its
# options from BenchSettings' and Thresholds' defaults without importing torch at start-up.
_LAZY_NAMES = {
    "..environment": ("collect_environment",),
    ".accuracy": ("accuracy_metrics", "parity_metrics", "predict"),
    ".artifacts": ("ExportedFile", "Exports", "load_export_manifest", "load_exports", "merge_exports"),
    ".latency": ("latency_input", "measure_latency", "sweep_latency"),
    ".memory": ("is_out_of_memory",),
    ".results": ("build_results",),
    ".rows": ("run_benchmark",),
    ".run": ("benchmark_artifacts",),
    ".runners": ("build_runners",),
    ".verify": ("apply_verification", "raise_if_failed", "verify_results"),
}
_MODULE_OF = {name: module for module, names in _LAZY_NAMES.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RESULTS_FORMAT",
    "RESULTS_VERSION",
    "BenchInterrupted",
    "BenchSettings",
    "ExportedFile",
    "Exports",
    "Thresholds",
    "accuracy_metrics",
    "apply_verification",
    "benchmark_artifacts",
    "build_results",
    "build_runners",
    "collect_environment",
    "is_out_of_memory",
    "latency_input",
    "load_export_manifest",
    "load_exports",
    "measure_latency",
    "merge_exports",
    "parity_metrics",
    "predict",
    "raise_if_failed",
    "raise_if_interrupted",
    "run_benchmark",
    "sweep_latency",
    "verify_results",
]
