"""``resnet-deploy pipeline``: from nothing to a verified report in one command.

Stages, in order (each one a call of another stage's public function)::

    train      train.train                  -> runs/<name>/last.pt   (or checkpoint: reuse a file or pretrained:NAME)
    quantize   quantize.quantize_ptq / _qat -> calibration/<name>-<ptq|qat>-<target>/
    export     export.export_checkpoint     -> exports/<name>/        FP32, FP16, TensorRT-scheme int8, engines
                                               exports/<name>-cpu/    CPU-scheme (U8S8) int8 for ONNX Runtime
    bench      bench.benchmark_artifacts    -> benchmarks/results/<name>/results.json, plots
    report     report.write_report          -> benchmarks/results/<name>/report.md (with the stage table)

State lives in ``benchmarks/results/<name>/pipeline.json``: per stage, the hash of its inputs (settings,
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
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError, VerificationError
from .fileio import read_json, sha256_bytes, sha256_file, write_json
from .quantize_choices import TARGETS
from .validation import is_text
from .zoo import pretrained_name, read_registry

log = logging.getLogger(__name__)

STATE_FORMAT = "resnet-deploy/pipeline"
QUANTIZATION_CHOICES = ("ptq", "qat", "both", "none")
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
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise UserError(f"--name must be a plain folder name, got {self.name!r}")
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
class StageRecord:
    name: str
    status: str  # done | current | skipped | failed
    reason: str | None = None
    inputs_hash: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # path -> sha256
    seconds: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PipelineResult:
    stages: list[StageRecord]
    results: dict | None
    paths: dict[str, Path]


def _hash(data: Any) -> str:
    return sha256_bytes(json.dumps(data, sort_keys=True, default=str).encode())


def dataset_fingerprint(dataset) -> str:
    """Identity of a decoded dataset (source, subset, sizes, labels) for stage input hashes."""
    return _hash(
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


class _State:
    """pipeline.json: the records of the last run, keyed by stage name."""

    def __init__(self, path: Path, force: bool) -> None:
        self.path = path
        self.force = force
        self.previous: dict[str, dict] = {}
        if path.is_file() and not force:
            try:
                self.previous = _read_state(path)
            except UserError as exc:
                log.info(f"pipeline state {path} is unreadable ({exc}); redoing every stage")
        self.records: list[StageRecord] = []

    def is_current(self, name: str, inputs_hash: str) -> bool:
        """Same inputs as last time, and every output still there with the same content."""
        old = self.previous.get(name)
        if self.force or not old or old.get("status") not in ("done", "current") or old.get("inputs_hash") != inputs_hash:
            return False
        outputs = old.get("outputs") or {}
        return bool(outputs) and all(Path(p).is_file() and sha256_file(p) == digest for p, digest in outputs.items())

    def previous_outputs(self, name: str) -> dict[str, str]:
        return dict((self.previous.get(name) or {}).get("outputs") or {})

    def add(self, record: StageRecord) -> StageRecord:
        """Record (or replace) the stage's outcome and save at once, so a killed run leaves a trace."""
        self.records = [r for r in self.records if r.name != record.name] + [record]
        self.save()
        return record

    def interrupted_with_same_inputs(self, name: str, inputs_hash: str) -> bool:
        """The last run of ``name`` had these inputs and did not finish (failed or killed). Never with
        --force, which starts from no previous records: every stage starts over."""
        old = self.previous.get(name) or {}
        return old.get("inputs_hash") == inputs_hash and old.get("status") in ("running", "failed")

    def save(self) -> None:
        write_json(self.path, {"format": STATE_FORMAT, "version": 1, "stages": [r.to_dict() for r in self.records]})


def _read_state(path: Path) -> dict[str, dict]:
    """The stage records of pipeline.json, by name. Only records whose fields have the types used
    (name, status, inputs_hash, outputs: {file: sha256}) are kept: a damaged or hand-edited state file
    costs a redo of those stages, never a traceback."""
    data = read_json(path, "pipeline state")
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise UserError("not a resnet-deploy pipeline state")
    stages = data.get("stages", [])
    if not isinstance(stages, list):
        raise UserError("'stages' is not a list")
    previous = {}
    for stage in stages:
        if not (isinstance(stage, dict) and isinstance(stage.get("name"), str)):
            continue
        outputs = stage.get("outputs") or {}
        if not (isinstance(outputs, dict) and all(is_text(p) and isinstance(d, str) for p, d in outputs.items())):
            continue
        previous[stage["name"]] = stage
    return previous


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


def _outputs(*paths: Path) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in paths if p.is_file()}


def _run_stage(
    state: _State, name: str, inputs: dict, work: Callable[[], list[Path]], keep_going_on: tuple[type, ...] = ()
) -> StageRecord:
    """Run ``work`` unless its inputs and outputs are current; record the outcome.

    An exception of a ``keep_going_on`` type (a failed check whose evidence was written) marks the stage
    failed and lets the pipeline go on to bench and report; anything else stops it.
    """
    inputs_hash = _hash(inputs)
    if state.is_current(name, inputs_hash):
        log.info(f"[{name}] current (inputs unchanged, outputs verified): skipping; --force redoes it")
        return state.add(StageRecord(name, "current", "inputs and outputs unchanged since the last run", inputs_hash, state.previous_outputs(name)))
    log.info(f"[{name}] running")
    state.add(StageRecord(name, "running", None, inputs_hash))
    started = time.perf_counter()
    try:
        produced = work()
    except BaseException as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines()) or type(exc).__name__
        state.add(StageRecord(name, "failed", reason, inputs_hash, {}, round(time.perf_counter() - started, 1)))
        if isinstance(exc, keep_going_on):
            log.info(f"[{name}] failed: {reason}; continuing so the report shows it")
            return state.records[-1]
        raise
    record = StageRecord(name, "done", None, inputs_hash, _outputs(*produced), round(time.perf_counter() - started, 1))
    log.info(f"[{name}] done in {record.seconds:.0f} s")
    return state.add(record)


def _skip(state: _State, name: str, reason: str) -> StageRecord:
    log.info(f"[{name}] skipped: {reason}")
    return state.add(StageRecord(name, "skipped", reason))


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
    state = _State(config.state_path, config.force)
    dataset = load_data()
    data_id = dataset_fingerprint(dataset)

    # ---------------------------------------------------------------- train
    if reused is not None:
        checkpoint = reused
        origin = f"shipped {config.checkpoint}" if pretrained_name(config.checkpoint) else "--checkpoint given"
        _skip(state, "train", f"{origin}: reusing {checkpoint} (sha256 {sha256_file(checkpoint)[:12]})")
    else:
        checkpoint = config.run_dir / "last.pt"
        train_inputs = {
            "model": config.model, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
            "seed": config.seed, "dataset": data_id,
        }
        # An interrupted run with the same settings continues from its last checkpoint; other settings
        # start over (resuming would silently keep the old run's configuration).
        resume = state.interrupted_with_same_inputs("train", _hash(train_inputs))
        _run_stage(state, "train", train_inputs, lambda: _train(config, dataset, resume))
    checkpoint_sha = sha256_file(checkpoint)

    # ---------------------------------------------------------------- quantize
    loaded = load_checkpoint(checkpoint)
    int8_dirs: dict[str, Path] = {}  # target -> the artifact the export uses
    quantized_dirs: list[Path] = []
    kinds = {"ptq": ["ptq"], "qat": ["qat"], "both": ["ptq", "qat"], "none": []}[config.quantization]
    if not kinds:
        _skip(state, "quantize", "--quantization none: no int8 model")
    for kind in kinds:
        for target in config.int8_targets:
            directory = config.calibration_dir(kind, target)
            inputs = {
                "checkpoint": checkpoint_sha, "kind": kind, "target": target, "dataset": data_id,
                "method": config.calib_method, "calib_size": config.calib_size,
                **({"qat_epochs": config.qat_epochs, "qat_lr": config.qat_lr} if kind == "qat" else {}),
            }
            # as for training: an interrupted QAT with the same settings continues from its saved state
            resume = kind == "qat" and state.interrupted_with_same_inputs(f"quantize-{kind}-{target}", _hash(inputs))
            _run_stage(
                state, f"quantize-{kind}-{target}", inputs,
                lambda k=kind, t=target, d=directory, r=resume: _quantize(config, loaded, dataset, k, t, d, resume=r),
            )
            int8_dirs[target] = directory  # QAT (run after PTQ) wins when both ran
            quantized_dirs.append(directory)

    # ---------------------------------------------------------------- export
    export_dirs: list[Path] = []
    for target in ("tensorrt", "cpu"):
        if target == "cpu" and "cpu" not in int8_dirs:
            if kinds:
                _skip(state, "export-cpu", "no CPU-scheme int8 artifact (--int8-targets without cpu)")
            continue
        directory = config.export_dir(target)
        int8_dir = int8_dirs.get(target)
        inputs = {
            "checkpoint": checkpoint_sha, "target": target, "dataset": data_id,
            "int8": sha256_file(int8_dir / "manifest.json") if int8_dir else None,
            "fp16": config.fp16 and target == "tensorrt", "tensorrt": config.tensorrt if target == "tensorrt" else False,
            "compute_capability": config.compute_capability, "max_batch": config.max_batch,
        }
        record = _run_stage(
            state, f"export-{target}", inputs, lambda t=target, d=directory, i=int8_dir: _export(config, checkpoint, dataset, t, d, i),
            keep_going_on=(VerificationError,),
        )
        if record.status == "failed" and not (directory / "manifest.json").is_file():
            continue
        export_dirs.append(directory)
        if target == "tensorrt":
            from .export.manifest import load_manifest

            manifest = load_manifest(directory, verify_hashes=False)  # validated: artifacts and skipped are lists of objects
            engines = [a for a in manifest["artifacts"] if a["kind"] == "tensorrt"]
            if not engines:
                reasons = [s.get("reason") for s in manifest.get("skipped", []) if s["kind"] == "tensorrt"]
                _skip(state, "tensorrt-engines", reasons[0] if reasons and reasons[0] else "export built no TensorRT engine")

    # ---------------------------------------------------------------- bench + report
    from .bench import benchmark_artifacts

    bench_inputs = {
        "checkpoint": checkpoint_sha,
        "dataset": data_id,
        "exports": [sha256_file(d / "manifest.json") for d in export_dirs],
        "quantized": [sha256_file(d / "manifest.json") for d in quantized_dirs],
        "options": dataclasses.asdict(config.runner_options),
        "settings": dataclasses.asdict(config.bench_settings),
        "thresholds": dataclasses.asdict(config.thresholds) if config.thresholds else None,
    }
    results_path = config.results_dir / "results.json"
    holder: dict[str, Any] = {}

    def bench() -> list[Path]:
        results, paths = benchmark_artifacts(
            dataset, config.runner_options, config.bench_settings, run_name=config.name, output_dir=config.results_dir,
            checkpoint=checkpoint, export_dirs=export_dirs, quantized_dirs=quantized_dirs, thresholds=config.thresholds,
            command=config.command,
        )
        holder.update(results=results, paths=paths)
        raise_if_interrupted(results, paths)  # the stage is recorded as failed, with the signal
        return [paths["results"]]

    from .bench import BenchInterrupted, raise_if_interrupted
    from .report import write_report

    try:
        _run_stage(state, "bench", bench_inputs, bench)
    except BenchInterrupted:
        if "results" in holder:  # partial results were written: add this run's stage table to them
            holder["results"]["pipeline"] = {"stages": [r.to_dict() for r in state.records]}
            write_report(holder["results"], config.results_dir)
        raise
    results = holder.get("results") or _read_previous_results(results_path)

    # The report always reflects this run's stage table (cheap: no measurement).

    started = time.perf_counter()
    report_record = StageRecord("report", "done", None, None, {}, None)
    results["pipeline"] = {"stages": [r.to_dict() for r in state.records] + [report_record.to_dict()]}
    paths = write_report(results, config.results_dir)
    report_record.outputs = _outputs(paths["markdown"])
    report_record.seconds = round(time.perf_counter() - started, 1)
    state.add(report_record)
    # Keep the recorded bench output hash in step with the results.json just rewritten (it now holds
    # the stage table), so the next run still sees the bench stage as current.
    for record in state.records:
        if record.name == "bench":
            record.outputs = _outputs(paths["results"])
    state.save()
    return PipelineResult(state.records, results, paths)


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
