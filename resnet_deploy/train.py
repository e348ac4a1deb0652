"""Training: data resident on the device, augmentation on tensors, resumable to the batch.

The loop itself is ``loop.py``'s, shared with quantization-aware training: every random draw is a
function of (seed, epoch, step), so a run stopped anywhere (kill -9 after an epoch checkpoint, or
SIGINT/SIGTERM mid-epoch, which saves the batch reached) and resumed gives the same weights as a run
that never stopped. This module builds the model and optimizer (with the speed settings
``train_speed.py`` decides), evaluates each epoch and writes ``last.pt``/``best.pt``,
``metrics.jsonl``/``metrics.csv`` and ``config.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import read_checkpoint, save_checkpoint
from .data import ImageDataset, Normalization
from .distributed import DistributedContext
from .errors import UserError
from .evaluation import evaluate
from .fileio import ensure_writable_dir, remove_stale_temporaries, write_json
from .loop import (  # noqa: F401 (batch_seed, epoch_permutation, resolve_device, TrainingInterrupted: re-exported, callers import them from here)
    EpochLoop,
    LoopState,
    Optimization,
    SeededBatches,
    TrainingInterrupted,
    batch_seed,
    decay_groups,
    epoch_permutation,
    epochs_to_run,
    partial_loss,
    partial_top1,
    resolve_device,
    steps_per_epoch,
    start_loop,
    sums_over_ranks,
    train_one_epoch,
)
from .models import ModelSpec, build_model, normalize_spec
from .signals import StopRequest
from .train_config import AUTO, COMPILE_MIN_STEPS, OPTIMIZERS, PRECISION_CHOICES, PRECISIONS, SCHEDULES, TrainConfig  # noqa: F401 (re-exported: callers import them from here)
from .train_speed import resolve_speed_settings

log = logging.getLogger(__name__)

_OUTPUT_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.json")
_RESUME_KEYS = ("train_config", "optimizer", "scheduler", "epoch", "dataset")
_DIVERGENCE_HINT = "lower --lr, add --warmup-epochs, or use --precision fp32"


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base lr at each optimizer step: warm-up, then the chosen schedule."""
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    milestones = [int(m * total) for m in config.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_fraction = (step - warmup) / max(1, total - warmup)
        if config.schedule == "multistep":
            return config.gamma ** sum(step >= m for m in milestones)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_fraction)))
        if config.schedule == "onecycle":
            # Linear ramp to the peak over the first 25% (unless warm-up already did it), then linear
            # decay to zero: the short-run schedule that fast CIFAR trainers use.
            if warmup == 0:
                peak_at = 0.25
                if progress_fraction < peak_at:
                    return 0.1 + 0.9 * progress_fraction / peak_at
                return max(0.0, (1 - progress_fraction) / (1 - peak_at))
            return max(0.0, 1 - progress_fraction)
        return 1.0

    return factor


def train(
    config: TrainConfig,
    dataset: ImageDataset,
    output_dir: str | Path,
    resume: bool = False,
    dist: DistributedContext | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict:
    """Train ``config.model`` on ``dataset``; checkpoints and logs go to ``output_dir``.

    Returns the final metrics. ``on_step(epoch, step)`` is a hook for tests (fault injection).
    """
    dist = dist or DistributedContext()
    config.validate()
    output_dir = Path(output_dir)
    if dist.is_main:
        ensure_writable_dir(output_dir, needed_bytes=64 << 20, what="--output")
        # A kill -9 mid-write leaves a temporary file next to its target (the target itself is intact):
        # remove those so repeated kills do not fill the disk.
        remove_stale_temporaries(output_dir, _OUTPUT_FILES)
    device = dist.device_for(config.device)
    state = _read_last_checkpoint(output_dir / "last.pt", resume, dist)
    if state is not None:
        config = _resumed_config(state, config, dataset, output_dir / "last.pt")
    config = _decide_speed_settings(config, dataset, device, dist)
    run = _start_run(config, dataset, output_dir, device, dist, state)
    metrics = _train_epochs(run, on_step)
    return {**metrics, "best_top1": run.best_accuracy, "checkpoint": str(run.last_path), "best_checkpoint": str(run.best_path)}


@dataclass
class _Run:
    """One launch of :func:`train`: what its epochs, evaluations, checkpoints and logs use."""

    config: TrainConfig
    dataset: ImageDataset
    output_dir: Path
    device: torch.device
    dist: DistributedContext
    spec: ModelSpec
    model: torch.nn.Module  # unwrapped: the optimizer, evaluation and checkpoints use it
    norm: Normalization
    batches: SeededBatches
    optimization: Optimization
    state: LoopState
    best_accuracy: float = 0.0
    dataset_info: dict = field(default_factory=dict)  # the dataset's description, its normalisation left out

    @property
    def last_path(self) -> Path:
        return self.output_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "best.pt"

    def payload(self, epoch: int, step: int) -> dict:
        """The checkpoint (and resume payload) at batch ``step`` of ``epoch``."""
        scaler = self.optimization.scaler
        return {
            "model": self.spec.to_dict(),
            # contiguous(): a channels_last run's weights are stored in the standard layout, so a
            # checkpoint's bytes do not depend on the memory format it was trained in.
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "normalization": self.norm.to_dict(),
            "dataset": self.dataset_info,
            "epoch": epoch,
            "step": step,
            "train_config": self.config.to_dict(),
            "optimizer": self.optimization.optimizer.state_dict(),
            "scheduler": self.optimization.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "best_accuracy": self.best_accuracy,
            "history": self.state.history,
            "partial": self.state.partial,
            "torch_version": str(torch.__version__),
        }

    def save_last(self, epoch: int, step: int) -> None:
        """last.pt at (epoch, step), written by rank 0 only."""
        if self.dist.is_main:
            save_checkpoint(self.last_path, self.payload(epoch, step))


def _decide_speed_settings(config: TrainConfig, dataset: ImageDataset, device: torch.device, dist: DistributedContext) -> TrainConfig:
    """``config`` with its "auto" speed options decided for this device and run length."""
    if dataset.num_classes < 2:
        raise UserError("the dataset must have at least 2 classes")
    steps = _steps_per_epoch(config.batch_size, dist.world_size, len(dataset.train_images))
    speed = resolve_speed_settings(config, device, config.epochs * steps)
    if dist.is_main:
        log.info(speed.describe())
    return speed.apply(config)


def _start_run(
    config: TrainConfig, dataset: ImageDataset, output_dir: Path, device: torch.device, dist: DistributedContext, state: dict | None
) -> _Run:
    """Model, optimizer and loop position (from ``state`` when resuming); config.json written."""
    last_path = output_dir / "last.pt"
    spec, model, norm = _build_model(config, dataset, state, last_path)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = dist.wrap(model, config, device)
    if config.compile:
        train_model = torch.compile(train_model)
    if dist.is_main:
        _check_checkpoint_room(output_dir, model, config)
    optimization = _build_optimization(config, model, train_model, dist.world_size, device, len(dataset.train_images))
    loop_state, batches = start_loop(state, optimization, dataset, config.batch_size, config.seed, norm, device, dist, config.channels_last)
    best_accuracy = 0.0
    if state is not None:
        best_accuracy = state.get("best_accuracy", 0.0)
        log.info(f"resuming {last_path}: epoch {loop_state.epoch + 1}, batch {loop_state.step}")
    dataset_info = {k: v for k, v in dataset.describe().items() if k != "normalization"}
    run = _Run(config, dataset, output_dir, device, dist, spec, model, norm, batches, optimization, loop_state, best_accuracy, dataset_info)
    if dist.is_main:
        write_json(output_dir / "config.json", {"train": config.to_dict(), "model": spec.to_dict(), "dataset": run.dataset_info})
        if state is None and dist.max_restarts > 0:
            # Under torchrun with restarts, a restart before the first epoch ends must find this run's
            # starting state, never a last.pt left in OUTPUT by an earlier run.
            save_checkpoint(last_path, run.payload(0, 0))
    return run


def _build_model(
    config: TrainConfig, dataset: ImageDataset, state: dict | None, last_path: Path
) -> tuple[ModelSpec, torch.nn.Module, Normalization]:
    """The model (seeded initialisation, or the checkpoint's weights) and the normalisation it uses."""
    torch.manual_seed(config.seed)
    spec = normalize_spec(config.model, dataset.num_classes, config.plain, config.shortcut)
    model = build_model(spec)
    if state is None:
        return spec, model, dataset.normalization
    if state["model"] != spec.to_dict():
        raise UserError(f"{last_path} holds {state['model']}, not {spec.to_dict()}; use another --output")
    model.load_state_dict(state["state_dict"])
    return spec, model, Normalization.from_dict(state["normalization"])


def _check_checkpoint_room(output_dir: Path, model: torch.nn.Module, config: TrainConfig) -> None:
    """Room for last.pt, best.pt and the temporary copy written while one is replaced, checked now
    rather than when the first epoch ends. Optimizer state: SGD keeps one buffer per weight, AdamW two."""
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    checkpoint_bytes = weight_bytes * (2 if config.optimizer == "sgd" else 3)
    ensure_writable_dir(output_dir, needed_bytes=3 * checkpoint_bytes + (16 << 20), what="--output")


def _build_optimization(
    config: TrainConfig, model: torch.nn.Module, train_model: torch.nn.Module, world_size: int, device: torch.device, num_train: int
) -> Optimization:
    """Optimizer (no weight decay on BN and biases), warm-up + schedule, and the fp16 grad scaler."""
    base_lr = config.lr * (world_size if config.lr_scale else 1)
    groups = decay_groups(model.named_parameters(), config.weight_decay)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=config.momentum, nesterov=config.nesterov)
    else:
        optimizer = torch.optim.AdamW(groups, lr=base_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch(num_train, config.batch_size)))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16" and device.type == "cuda")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    return Optimization(
        train_model, optimizer, scheduler, scaler, device.type, autocast_dtype, config.label_smoothing, "training", _DIVERGENCE_HINT
    )


def _train_epochs(run: _Run, on_step: Callable[[int, int], None] | None) -> dict:
    """The epochs left; returns the last epoch's metrics row (the checkpoint's when none is left)."""
    loop = EpochLoop(
        run.batches,
        run.optimization,
        count=sums_over_ranks(run.dist, run.config.batch_size),
        save_stopped=run.save_last,
        saved_to=run.last_path,
        epochs=run.config.epochs,
        hooks=[hook for hook in (on_step, run.dist.step_hook) if hook is not None],
    )
    metrics: dict = run.state.history[-1] if run.state.history else {}
    with StopRequest() as stop:
        for epoch, first_step in epochs_to_run(run.state, run.config.epochs):
            run.model.train()
            train_one_epoch(loop, run.state, epoch, first_step, stop)
            metrics = _end_epoch(run, epoch)
    return metrics


def _end_epoch(run: _Run, epoch: int) -> dict:
    """Evaluate, record the epoch's row, write best.pt, the metrics files and last.pt (rank 0)."""
    config, partial = run.config, run.state.partial
    test = evaluate(
        run.model, run.dataset.test_images, run.dataset.test_labels, run.norm, config.eval_batch_size, run.device, config.channels_last
    )
    metrics = {
        "epoch": epoch + 1,
        "lr": run.optimization.optimizer.param_groups[0]["lr"],
        "train_loss": partial_loss(partial),
        "train_top1": partial_top1(partial),
        "test_loss": test["loss"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "epoch_time_s": partial["time"],
        "train_images_per_sec": partial["seen"] / max(partial["time"], 1e-9),
        "peak_memory_mb": _peak_memory_mb(run.device),
    }
    run.state.history.append(metrics)
    is_best = metrics["test_top1"] > run.best_accuracy
    run.best_accuracy = max(run.best_accuracy, metrics["test_top1"])
    if run.dist.is_main:
        # last.pt is written last: it is the commit point. A kill before it leaves the previous
        # last.pt, --resume redoes this epoch (same result) and rewrites best.pt and the metrics.
        if is_best:
            save_checkpoint(run.best_path, run.payload(epoch + 1, 0))
        _write_metrics(run.output_dir, run.state.history)
        save_checkpoint(run.last_path, run.payload(epoch + 1, 0))
        log.info(
            f"epoch {epoch + 1}: train loss {metrics['train_loss']:.3f}, test top-1 {metrics['test_top1']:.2f}% "
            f"(best {run.best_accuracy:.2f}%), {metrics['train_images_per_sec']:.0f} img/s"
        )
    run.dist.barrier()
    return metrics


def _read_last_checkpoint(last_path: Path, resume: bool, dist: DistributedContext) -> dict | None:
    """The checkpoint to continue from, on every rank; None: start fresh."""
    # A torchrun restart (--max-restarts) resumes by itself. Only rank 0 reads the checkpoint; every
    # rank gets its content, so all agree on where to resume and no shared filesystem is needed.
    resume = resume or dist.restart_count > 0
    state = dist.read_on_main(lambda: read_checkpoint(last_path) if resume and last_path.is_file() else None)
    if resume and state is None:
        log.info(f"--resume: no checkpoint at {last_path}, starting fresh")
    return state


def _resumed_config(state: dict, config: TrainConfig, dataset: ImageDataset, last_path: Path) -> TrainConfig:
    """The checkpoint's own config (speed settings as its first launch decided them), with only
    --epochs, --device and --sync-bn taken from this launch."""
    lacking = [key for key in _RESUME_KEYS if key not in state]
    if lacking:
        raise UserError(
            f"--resume: {last_path} is not a training checkpoint (it lacks {', '.join(lacking)})",
            hint="start the run in another --output",
        )
    saved_data = state["dataset"]
    if saved_data.get("classes") != dataset.classes or saved_data.get("train_size") != len(dataset.train_images):
        raise UserError(
            f"--resume: {last_path} was trained on {saved_data.get('name')} ({saved_data.get('train_size')} training "
            f"images, {len(saved_data.get('classes') or [])} classes), not on this {dataset.name} "
            f"({len(dataset.train_images)} images, {dataset.num_classes} classes)",
            hint="resume with the same --dataset, --data-dir and --train-subset, or use another --output",
        )
    saved = TrainConfig.from_dict(state["train_config"])
    saved.epochs = config.epochs  # the one option a resumed run may change (to extend it)
    saved.device = config.device
    if saved.sync_bn != config.sync_bn:  # how to run, like --device: this launch's flag decides
        log.info(f"--sync-bn is {'on' if config.sync_bn else 'off'} for this launch (the checkpoint's run had it {'on' if saved.sync_bn else 'off'})")
    saved.sync_bn = config.sync_bn
    return saved


def _steps_per_epoch(global_batch: int, world_size: int, num_train: int) -> int:
    if global_batch % world_size:
        raise UserError(f"--batch-size {global_batch} must be divisible by the number of ranks ({world_size})")
    if global_batch > num_train:
        raise UserError(f"--batch-size {global_batch} is larger than the {num_train} training images; use at most {num_train}")
    return steps_per_epoch(num_train, global_batch)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:  # pragma: no cover - non-Unix
        return float("nan")


def _write_metrics(output_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, rewritten whole from the checkpoint's history each epoch, so
    a resumed run never duplicates or loses a row."""
    from .fileio import atomic_write_text

    atomic_write_text(output_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[-1]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(output_dir / "metrics.csv", buffer.getvalue())
