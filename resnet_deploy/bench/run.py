"""One call for the CLI and the pipeline: load a checkpoint and its artifacts, check they belong
together and to the dataset, bench every runner, verify, and write the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError
from ..signals import StopRequest
from .artifacts import load_exports
from .results import build_results
from .rows import run_benchmark
from .runners import build_runners
from .settings import BenchSettings, Thresholds
from .stopping import BenchInterrupted
from .verify import apply_verification


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
    refuse_others: bool = False,
) -> tuple[dict, dict]:
    """Bench a checkpoint and its artifacts on ``dataset``'s test split and write the report.

    ``options`` is a :class:`~resnet_deploy.backends.RunnerOptions`. ``export_dirs``: export directories
    (manifest.json) of this checkpoint; ``quantized_dirs``: quantize artifacts for PyTorch int8 rows. The
    checkpoint defaults to the one the first export manifest names. With ``thresholds`` the results carry
    a verification verdict; the caller raises on failure (``raise_if_failed``) after the report is
    written, so a failing run still leaves its evidence. Returns (results, paths written). With
    ``refuse_others`` (the CLI without --force), results.json in ``output_dir`` of another checkpoint or
    test set is refused (UserError) before anything is measured, rather than overwritten.

    SIGINT/SIGTERM are caught from here on: the benchmark stops at the next safe point and what was
    measured is written like a full run, with ``results["interrupted"]`` set (and no verification:
    the rows are incomplete). The caller then ends with :func:`raise_if_interrupted`, as it does with
    :func:`raise_if_failed`. If nothing at all was measured, nothing is written (an earlier run's
    results stay) and :class:`BenchInterrupted` is raised here. A signal after the last measurement
    loses nothing: the run finishes as if it had not come.
    """
    from ..fileio import ensure_writable_dir

    settings.validate()
    output_dir = ensure_writable_dir(output_dir, what="benchmark output directory")
    with StopRequest() as stop:
        return _benchmark_artifacts(
            dataset, options, settings, stop, run_name=run_name, output_dir=output_dir, checkpoint=checkpoint,
            export_dirs=export_dirs, quantized_dirs=quantized_dirs, thresholds=thresholds, command=command, extra=extra,
            refuse_others=refuse_others,
        )


def _benchmark_artifacts(dataset, options, settings: BenchSettings, stop: StopRequest, *, run_name, output_dir, checkpoint,
                         export_dirs, quantized_dirs, thresholds, command, extra, refuse_others) -> tuple[dict, dict]:
    from ..checkpoint import check_dataset_matches
    from ..overwrite_guard import refuse_overwrite, results_differences
    from ..report import write_report

    exports = load_exports(export_dirs)
    loaded = _load_matching_checkpoint(checkpoint, exports)
    refuse_overwrite(output_dir, "results.json", results_differences(loaded.path, loaded.sha256, dataset),
                     what="benchmark results", force=not refuse_others, instead="give another --name")
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


def benched_checkpoint(checkpoint: str | os.PathLike | None, exports: Sequence[tuple[Path, dict]]) -> Path:
    """The checkpoint a bench measures: the one given, else the one the first export manifest names
    (as written there, or relative to that export directory). ``exports``: (directory, manifest)."""
    if checkpoint is not None:
        return Path(checkpoint)
    if not exports:
        raise UserError("give a checkpoint (--checkpoint) or an export directory (--export) whose manifest names one")
    first_dir, first = exports[0]
    named = Path(first["checkpoint"]["path"])
    if not named.is_file() and (first_dir / named).is_file():
        named = first_dir / named
    if not named.is_file():
        raise UserError(f"the checkpoint {named} named by {first_dir}/manifest.json is not there", hint="pass --checkpoint")
    return named


def _load_matching_checkpoint(checkpoint, exports: list[tuple[Path, dict]]):
    """The benched checkpoint, loaded; every export must have been made from it (same sha256)."""
    from ..checkpoint import load_checkpoint

    checkpoint = benched_checkpoint(checkpoint, exports)
    loaded = load_checkpoint(checkpoint)
    for export_dir, manifest in exports:
        if manifest.get("checkpoint", {}).get("sha256") not in (None, loaded.sha256):
            raise UserError(
                f"{export_dir} was exported from a different checkpoint than {checkpoint} (sha256 differs)",
                hint="bench the checkpoint the export was made from, or export this one",
            )
    return loaded


def _anything_measured(rows: list[dict]) -> bool:
    return any(row.get("accuracy") or any(e["status"] == "ok" for e in row.get("latency", [])) for row in rows)
