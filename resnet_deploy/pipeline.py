"""``resnet-deploy pipeline``: from nothing to a verified report in one command.

Stages, in order (each one a call of another stage's public function)::

    train      train.train                  -> runs/<name>/last.pt   (or checkpoint: reuse a file or pretrained:NAME)
    quantize   quantize.quantize_ptq / _qat -> calibration/<name>-<ptq|qat>-<target>/
    export     export.export_checkpoint     -> exports/<name>/        FP32, FP16, TensorRT-scheme int8, engines
                                               exports/<name>-cpu/    CPU-scheme (U8S8) int8 for ONNX Runtime
    bench      bench.benchmark_artifacts    -> benchmarks/results/<name>/results.json, plots
    report     report.write_report          -> benchmarks/results/<name>/report.md (with the stage table)

State lives in ``benchmarks/results/<name>/pipeline.json`` (``pipeline_state.py``): per stage, the hash of its inputs (settings,
dataset fingerprint, sha256 of the files it reads) and the sha256 of what it wrote. A rerun skips a
stage whose inputs hash the same and whose outputs are still there unchanged ("current"); ``force``
redoes everything. A stage that cannot run here (no TensorRT, no GPU, not requested) is recorded as
skipped with its reason and shown in the report; nothing is dropped silently.

SIGINT/SIGTERM during the bench stage end it like ``resnet-deploy bench``: the partial results are
written (with this run's stage table, the bench stage recorded as failed with the signal) and
``bench.BenchInterrupted`` is raised (exit 128 + signal); the next run redoes the bench.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserError, VerificationError
from .fileio import read_json, sha256_bytes, sha256_file
from .pipeline_state import PipelineState, StageRecord, file_digests, hash_inputs, run_stage, skip_stage
from .quantize_choices import TARGETS
from .run_names import check_export_name, check_run_name
from .zoo import pretrained_name, read_registry

# What each --quantization value runs, in order (QAT after PTQ: the exports use QAT's artifact then).
_QUANTIZATION_KINDS = {"ptq": ("ptq",), "qat": ("qat",), "both": ("ptq", "qat"), "none": ()}
QUANTIZATION_CHOICES = tuple(_QUANTIZATION_KINDS)
# The quantize stage's targets, in the order the pipeline has always run them: cpu first, then the rest
# in quantize_choices' order.
INT8_TARGETS = tuple(sorted(TARGETS, key=lambda target: target != "cpu"))


@dataclass
class PipelineConfig:
    """Every option of ``resnet-deploy pipeline``."""

    name: str
    workdir: Path = Path(".")
    checkpoint: str | Path | None = None  # a file or pretrained:NAME to start from; None: train ``model``
    # train
    model: str = "resnet20"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    seed: int = 0
    train_device: str = "auto"
    # quantize
    quantization: str = "ptq"
    int8_targets: tuple[str, ...] = INT8_TARGETS
    calib_method: str | None = None  # None: the quantize stage's default
    calib_size: int = 1000
    qat_epochs: int = 2
    qat_lr: float = 1e-3
    # export
    fp16: bool = True
    tensorrt: bool | None = None  # None: engines when TensorRT can build here
    compute_capability: str | None = None
    max_batch: int = 256
    # bench
    runner_options: Any = None  # backends.RunnerOptions
    bench_settings: Any = None  # bench.BenchSettings
    thresholds: Any = None  # bench.Thresholds | None (None: no verification)
    force: bool = False
    command: list[str] | None = None

    def validate(self) -> None:
        check_run_name(self.name)  # runs/NAME, calibration/NAME-*, benchmarks/results/NAME
        check_export_name(self.name)  # exports/NAME and exports/NAME-cpu: export's stricter rule, met after training
        if self.quantization not in QUANTIZATION_CHOICES:
            raise UserError(f"--quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, got {self.quantization!r}")
        unknown = [t for t in self.int8_targets if t not in INT8_TARGETS]
        if unknown or not self.int8_targets:
            raise UserError(f"--int8-targets accepts {', '.join(INT8_TARGETS)} (comma-separated), got {','.join(self.int8_targets)}")
        if self.epochs < 1 or self.qat_epochs < 1:
            raise UserError("--epochs and --qat-epochs must be >= 1")
        shipped = pretrained_name(self.checkpoint) if self.checkpoint is not None else None
        if self.checkpoint is not None and shipped is None and not Path(self.checkpoint).is_file():
            raise UserError(f"--checkpoint {self.checkpoint} not found")
        if shipped is not None and shipped not in (models := read_registry()["models"]):
            raise UserError(f"no shipped {self.checkpoint} (shipped: {', '.join(sorted(models)) or 'none'})",
                            hint="--train trains --model from scratch; --checkpoint FILE starts from a file")

    # where each stage writes
    @property
    def run_dir(self) -> Path:
        return self.workdir / "runs" / self.name

    @property
    def results_dir(self) -> Path:
        return self.workdir / "benchmarks" / "results" / self.name

    @property
    def state_path(self) -> Path:
        return self.results_dir / "pipeline.json"

    def calibration_dir(self, kind: str, target: str) -> Path:
        return self.workdir / "calibration" / f"{self.name}-{kind}-{target}"

    def export_dir(self, target: str) -> Path:
        return self.workdir / "exports" / (self.name if target == "tensorrt" else f"{self.name}-{target}")


@dataclass
class PipelineResult:
    stages: list[StageRecord]
    results: dict | None
    paths: dict[str, Path]


def dataset_fingerprint(dataset) -> str:
    """Identity of a decoded dataset (source, subset, sizes, labels) for stage input hashes."""
    return hash_inputs(
        {
            "name": dataset.name,
            "source": dataset.source,
            "classes": dataset.classes,
            "train": int(len(dataset.train_images)),
            "test": int(len(dataset.test_images)),
            "train_labels": sha256_bytes(dataset.train_labels.tobytes()),
            "test_labels": sha256_bytes(dataset.test_labels.tobytes()),
        }
    )


def _read_previous_results(path: Path) -> dict:
    """results.json of the bench stage when that stage is current (not re-run): validated before the
    report is rewritten from it, so a damaged file is refused with a message, not a traceback."""
    from .report import validate_results

    results = read_json(path, "benchmark results")
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list) or not all(isinstance(r, dict) for r in results["rows"]):
        raise UserError(f"benchmark results {path} are malformed: no list of rows", hint="re-run with --force")
    try:
        validate_results(results)
    except Exception as exc:  # jsonschema.ValidationError: jsonschema is only a dev dependency
        if type(exc).__name__ != "ValidationError":
            raise
        raise UserError(f"benchmark results {path} are malformed: {exc.message}", hint="re-run with --force") from exc
    return results


def run_pipeline(config: PipelineConfig, load_data: Callable[[], Any]) -> PipelineResult:
    """Run every stage (see the module docstring). Returns the records, the bench results and paths.

    Verification failures do not raise here: the caller checks ``results["verification"]`` (the CLI
    exits 1 via bench.raise_if_failed) after everything is written.
    """
    from .backends import RunnerOptions
    from .bench import BenchSettings
    from .checkpoint import load_checkpoint, resolve_checkpoint

    config.validate()
    # pretrained:NAME becomes its shipped file here, sha256 verified, before the data is loaded
    reused = resolve_checkpoint(config.checkpoint) if config.checkpoint is not None else None
    config.runner_options = config.runner_options or RunnerOptions()
    config.bench_settings = config.bench_settings or BenchSettings()
    config.results_dir.mkdir(parents=True, exist_ok=True)
    state = PipelineState(config.state_path, config.force)
    dataset = load_data()
    run = _PipelineRun(config, state, dataset, dataset_fingerprint(dataset))

    checkpoint = _train_stage(run, reused)
    run.checkpoint_sha = sha256_file(checkpoint)
    int8_dirs, quantized_dirs = _quantize_stages(run, load_checkpoint(checkpoint))
    export_dirs = _export_stages(run, checkpoint, int8_dirs)
    results = _bench_stage(run, checkpoint, export_dirs, quantized_dirs)
    paths = _report_stage(run, results)
    return PipelineResult(state.records, results, paths)


@dataclass
class _PipelineRun:
    """What every stage of one :func:`run_pipeline` call reads: the options, the state file, the data."""

    config: PipelineConfig
    state: PipelineState
    dataset: Any
    data_id: str  # dataset_fingerprint(dataset)
    checkpoint_sha: str | None = None  # of the FP32 checkpoint every later stage starts from, once known


def _train_stage(run: _PipelineRun, reused: Path | None) -> Path:
    """The FP32 checkpoint: the one given (train skipped), else trained (or resumed) into runs/<name>/."""
    config, state = run.config, run.state
    if reused is not None:
        origin = f"shipped {config.checkpoint}" if pretrained_name(config.checkpoint) else "--checkpoint given"
        skip_stage(state, "train", f"{origin}: reusing {reused} (sha256 {sha256_file(reused)[:12]})")
        return reused
    train_inputs = {
        "model": config.model, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
        "seed": config.seed, "dataset": run.data_id,
    }
    # An interrupted run with the same settings continues from its last checkpoint; other settings
    # start over (resuming would silently keep the old run's configuration).
    resume = state.interrupted_with_same_inputs("train", hash_inputs(train_inputs))
    run_stage(state, "train", train_inputs, lambda: _train(config, run.dataset, resume))
    return config.run_dir / "last.pt"


def _quantize_stages(run: _PipelineRun, loaded) -> tuple[dict[str, Path], list[Path]]:
    """One quantize stage per kind (ptq, qat) and target. Returns the artifact each target's export
    uses (QAT's, run after PTQ, when both ran) and every artifact, for the bench."""
    config, state = run.config, run.state
    int8_dirs: dict[str, Path] = {}
    quantized_dirs: list[Path] = []
    kinds = _QUANTIZATION_KINDS[config.quantization]
    if not kinds:
        skip_stage(state, "quantize", "--quantization none: no int8 model")
    for kind in kinds:
        for target in config.int8_targets:
            directory = config.calibration_dir(kind, target)
            inputs = {
                "checkpoint": run.checkpoint_sha, "kind": kind, "target": target, "dataset": run.data_id,
                "method": config.calib_method, "calib_size": config.calib_size,
                **({"qat_epochs": config.qat_epochs, "qat_lr": config.qat_lr} if kind == "qat" else {}),
            }
            # as for training: an interrupted QAT with the same settings continues from its saved state
            resume = kind == "qat" and state.interrupted_with_same_inputs(f"quantize-{kind}-{target}", hash_inputs(inputs))
            run_stage(
                state, f"quantize-{kind}-{target}", inputs,
                lambda k=kind, t=target, d=directory, r=resume: _quantize(config, loaded, run.dataset, k, t, d, resume=r),
            )
            int8_dirs[target] = directory
            quantized_dirs.append(directory)
    return int8_dirs, quantized_dirs


def _export_stages(run: _PipelineRun, checkpoint: Path, int8_dirs: dict[str, Path]) -> list[Path]:
    """exports/<name>/ (FP32, FP16, TensorRT-scheme int8, engines) and exports/<name>-cpu/ (CPU-scheme
    int8). Returns the export folders that hold a manifest, for the bench."""
    export_dirs: list[Path] = []
    for target in TARGETS:
        if target == "cpu" and "cpu" not in int8_dirs:
            if _QUANTIZATION_KINDS[run.config.quantization]:
                skip_stage(run.state, "export-cpu", "no CPU-scheme int8 artifact (--int8-targets without cpu)")
            continue
        directory = _export_stage(run, checkpoint, target, int8_dirs.get(target))
        if directory is None:
            continue
        export_dirs.append(directory)
        if target == "tensorrt":
            _skip_if_no_engine(run.state, directory)
    return export_dirs


def _export_stage(run: _PipelineRun, checkpoint: Path, target: str, int8_dir: Path | None) -> Path | None:
    """One export stage; its folder, or None when it failed before writing a manifest. A failed check
    (VerificationError, manifest written) lets the pipeline go on, so the report shows it."""
    config = run.config
    directory = config.export_dir(target)
    inputs = {
        "checkpoint": run.checkpoint_sha, "target": target, "dataset": run.data_id,
        "int8": sha256_file(int8_dir / "manifest.json") if int8_dir else None,
        "fp16": config.fp16 and target == "tensorrt", "tensorrt": config.tensorrt if target == "tensorrt" else False,
        "compute_capability": config.compute_capability, "max_batch": config.max_batch,
    }
    record = run_stage(
        run.state, f"export-{target}", inputs, lambda: _export(config, checkpoint, run.dataset, target, directory, int8_dir),
        keep_going_on=(VerificationError,),
    )
    if record.status == "failed" and not (directory / "manifest.json").is_file():
        return None
    return directory


def _skip_if_no_engine(state: PipelineState, directory: Path) -> None:
    """A "tensorrt-engines" stage recorded as skipped, with the export's reason, when it built no engine."""
    from .export.manifest import load_manifest

    manifest = load_manifest(directory, verify_hashes=False)  # validated: artifacts and skipped are lists of objects
    engines = [a for a in manifest["artifacts"] if a["kind"] == "tensorrt"]
    if not engines:
        reasons = [s.get("reason") for s in manifest.get("skipped", []) if s["kind"] == "tensorrt"]
        skip_stage(state, "tensorrt-engines", reasons[0] if reasons and reasons[0] else "export built no TensorRT engine")


def _bench_stage(run: _PipelineRun, checkpoint: Path, export_dirs: list[Path], quantized_dirs: list[Path]) -> dict:
    """The bench stage's results: measured now, or read back from results.json when the stage is current.

    Interrupted (SIGINT/SIGTERM), the partial results get this run's stage table and the report is
    written before BenchInterrupted propagates."""
    from .bench import BenchInterrupted, benchmark_artifacts, raise_if_interrupted
    from .report import write_report

    config, state = run.config, run.state
    holder: dict[str, Any] = {}

    def bench() -> list[Path]:
        results, paths = benchmark_artifacts(
            run.dataset, config.runner_options, config.bench_settings, run_name=config.name, output_dir=config.results_dir,
            checkpoint=checkpoint, export_dirs=export_dirs, quantized_dirs=quantized_dirs, thresholds=config.thresholds,
            command=config.command,
        )
        holder.update(results=results, paths=paths)
        raise_if_interrupted(results, paths)  # the stage is recorded as failed, with the signal
        return [paths["results"]]

    try:
        run_stage(state, "bench", _bench_inputs(run, export_dirs, quantized_dirs), bench)
    except BenchInterrupted:
        if "results" in holder:  # partial results were written: add this run's stage table to them
            holder["results"]["pipeline"] = {"stages": [r.to_dict() for r in state.records]}
            write_report(holder["results"], config.results_dir)
        raise
    return holder.get("results") or _read_previous_results(config.results_dir / "results.json")


def _bench_inputs(run: _PipelineRun, export_dirs: list[Path], quantized_dirs: list[Path]) -> dict:
    config = run.config
    return {
        "checkpoint": run.checkpoint_sha,
        "dataset": run.data_id,
        "exports": [sha256_file(d / "manifest.json") for d in export_dirs],
        "quantized": [sha256_file(d / "manifest.json") for d in quantized_dirs],
        "options": dataclasses.asdict(config.runner_options),
        "settings": dataclasses.asdict(config.bench_settings),
        "thresholds": dataclasses.asdict(config.thresholds) if config.thresholds else None,
    }


def _report_stage(run: _PipelineRun, results: dict) -> dict[str, Path]:
    """report.md (and results.json) rewritten with this run's stage table, every time: it is cheap, no
    measurement. Returns write_report's paths."""
    from .report import write_report

    state = run.state
    started = time.perf_counter()
    report_record = StageRecord("report", "done", None, None, {}, None)
    results["pipeline"] = {"stages": [r.to_dict() for r in state.records] + [report_record.to_dict()]}
    paths = write_report(results, run.config.results_dir)
    report_record.outputs = file_digests(paths["markdown"])
    report_record.seconds = round(time.perf_counter() - started, 1)
    state.add(report_record)
    # Keep the recorded bench output hash in step with the results.json just rewritten (it now holds
    # the stage table), so the next run still sees the bench stage as current.
    for record in state.records:
        if record.name == "bench":
            record.outputs = file_digests(paths["results"])
    state.save()
    return paths


def raise_if_stages_failed(result: PipelineResult) -> None:
    """VerificationError naming every stage whose checks failed (after the report was written)."""
    failed = [record for record in result.stages if record.status == "failed"]
    if failed:
        raise VerificationError(f"{len(failed)} stage(s) failed:\n  " + "\n  ".join(f"{r.name}: {r.reason}" for r in failed))


# ============================================================================================ stage bodies


def _train(config: PipelineConfig, dataset, resume: bool) -> list[Path]:
    from .train import TrainConfig, train

    train_config = TrainConfig(
        model=config.model, dataset=dataset.name, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        seed=config.seed, device=config.train_device,
    )
    train(train_config, dataset, config.run_dir, resume=resume)
    return [config.run_dir / "last.pt"]


def _quantize(config: PipelineConfig, loaded, dataset, kind: str, target: str, directory: Path, resume: bool = False) -> list[Path]:
    from . import quantize

    # QAT starts from calibrated observers: the same method and calibration images as PTQ (both are
    # inputs of the stage's hash, so QAT must use them too).
    calibration = {"calib_size": config.calib_size, **({"method": config.calib_method} if config.calib_method else {})}
    if kind == "ptq":
        quantize.quantize_ptq(loaded, dataset, directory, target=target, **calibration)
    else:
        if not hasattr(quantize, "quantize_qat"):
            raise UserError("this resnet-deploy's quantize stage has no quantize_qat; use --quantization ptq")
        quantize.quantize_qat(loaded, dataset, directory, target=target, epochs=config.qat_epochs, lr=config.qat_lr,
                              resume=resume, **calibration)
    return [directory / "manifest.json"]


def _export(config: PipelineConfig, checkpoint: Path, dataset, target: str, directory: Path, int8_dir: Path | None) -> list[Path]:
    from .export import ExportOptions, export_checkpoint

    options = ExportOptions(
        checkpoint=checkpoint,
        output_dir=directory.parent,
        name=directory.name,
        fp16=config.fp16 and target == "tensorrt",
        int8_dir=int8_dir,
        tensorrt=config.tensorrt if target == "tensorrt" else False,
        compute_capability=config.compute_capability,
        max_batch=config.max_batch,
        dataset=dataset,
        threads=config.runner_options.threads if config.runner_options else None,
    )
    report = export_checkpoint(options)
    return [report.manifest_path]
