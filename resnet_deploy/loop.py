"""The training-loop core that ``train.train`` (FP32 training) and ``quantize.qat.quantize_qat``
(quantization-aware fine-tuning) share: seeded batch order, the augmentation step, the optimizer step,
partial metrics, and the stop/resume position. In the manner of torchvision's
references/classification/train.py: each caller builds its model and optimizer, then runs
:func:`train_one_epoch` for each epoch :func:`epochs_to_run` yields, and evaluates and saves as it needs.

Reproducibility and resumption rest on one rule: every random draw is a function of
(seed, epoch, step). The epoch's order is a permutation seeded by (seed, epoch) (:func:`epoch_permutation`);
each batch's augmentation uses a generator seeded by (seed, epoch, step + 1) (:func:`batch_seed`). So a
run stopped anywhere (kill -9 after an epoch's save, or SIGINT/SIGTERM mid-epoch, which saves the batch
reached) and resumed gives the same weights as a run that never stopped. What a resume payload holds of
the loop itself is :class:`LoopState`: where it stopped, the finished epochs' rows, and the current
epoch's partial sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import progress
from .data import ImageDataset, Normalization, augment, normalize, to_tensor_images
from .errors import UserError
from .signals import Interrupted, StopRequest

if TYPE_CHECKING:
    from .distributed import DistributedContext

StepHook = Callable[[int, int], None]  # hook(epoch, step), called after each optimizer step (0-based)
BatchSums = tuple[float, int, int]  # (summed loss, correct predictions, images) of one global batch


def resolve_device(name: str) -> torch.device:
    """``auto`` (a CUDA GPU if there is one, else cpu), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UserError(f"--device {name!r} is not a device (use auto, cpu, cuda, cuda:1)") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r} is not supported (use auto, cpu, cuda, cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available", hint="use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0.. only")
    return device


# ------------------------------------------------------------------------------------ seeded batches


def batch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def epoch_permutation(count: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch_seed(seed, epoch, 0x5EED))
    return torch.randperm(count, generator=generator)


def steps_per_epoch(num_train: int, global_batch: int) -> int:
    """Optimizer steps an epoch takes: the last partial batch is dropped, so every step has one shape."""
    return max(1, num_train // global_batch)


@dataclass
class SeededBatches:
    """The training batches of a run, each a function of (seed, epoch, step) only.

    Each rank takes its contiguous slice of the global batch: the global batch, and so the result, is
    the same for any number of ranks.
    """

    images: torch.Tensor  # uint8 NCHW, on ``device``
    labels: torch.Tensor  # int64, on ``device``
    batch_size: int  # the global batch
    seed: int
    normalization: Normalization
    device: torch.device
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_permutation(len(self.labels), self.seed, epoch).to(self.device)

    def batch(self, order: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's normalised, augmented inputs and their labels for batch ``step`` of ``epoch``."""
        indices = order[step * self.batch_size : (step + 1) * self.batch_size]
        generator = torch.Generator(device=self.device).manual_seed(batch_seed(self.seed, epoch, step + 1))
        images = augment(self.images[indices], generator)
        local_batch = self.batch_size // self.world_size
        local = slice(self.rank * local_batch, (self.rank + 1) * local_batch)
        return normalize(images[local], self.normalization, self.channels_last), self.labels[indices][local]


# ------------------------------------------------------------------------------------ optimizer step


@dataclass
class Optimization:
    """What one optimizer step needs. ``model`` is the module the forward runs through (a DDP or
    compiled wrapper, or the model itself); the optimizer holds the unwrapped model's parameters."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # disabled (a pass-through) unless fp16 on CUDA
    device_type: str = "cpu"
    autocast_dtype: torch.dtype | None = None  # None: no autocast (fp32)
    label_smoothing: float = 0.0
    what: str = "training"  # names the run in the divergence error
    divergence_hint: str = "lower --lr"

    def restore(self, state: dict) -> None:
        """Load the optimizer, scheduler and (when saved) grad-scaler state of a resume payload."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def decay_groups(named_parameters: Iterator[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: weight decay on weights, none on BatchNorm parameters and biases."""
    decay, no_decay = [], []
    for _, param in named_parameters:
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_step(opt: Optimization, inputs: torch.Tensor, targets: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and one optimizer and scheduler step; returns (loss, logits)."""
    dtype = opt.autocast_dtype
    with torch.autocast(opt.device_type, dtype=dtype, enabled=dtype is not None):
        logits = opt.model(inputs)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=opt.label_smoothing)
    if not torch.isfinite(loss):
        raise UserError(f"{opt.what} diverged: loss is {loss.item()} at epoch {epoch + 1}, batch {step}", hint=opt.divergence_hint)
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    return loss, logits


# ------------------------------------------------------------------------------------ partial metrics


def fresh_partial() -> dict:
    """The running sums of an epoch in progress (saved in resume payloads as ``partial``)."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "time": 0.0}


def partial_loss(partial: dict) -> float:
    return partial["loss"] / max(1, partial["seen"])


def partial_top1(partial: dict) -> float:
    return 100.0 * partial["correct"] / max(1, partial["seen"])


def sums_over_ranks(dist: "DistributedContext", global_batch: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], BatchSums]:
    """Batch sums all-reduced over the ranks, in float32 tensors (``train``'s metrics)."""

    def count(loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> BatchSums:
        sums = dist.all_reduce_sum(torch.stack([loss.detach() * len(targets), (logits.argmax(1) == targets).sum().float()])).tolist()
        return sums[0], int(sums[1]), global_batch

    return count


def local_sums(loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> BatchSums:
    """Batch sums of one process, the loss summed in Python floats (QAT's metrics; they differ from
    :func:`sums_over_ranks` in the last bits, so each loop keeps its own and its history stays as it was)."""
    return loss.item() * len(targets), int((logits.argmax(1) == targets).sum()), len(targets)


def _status(partial: dict, show_rate: bool) -> str:
    status = f"loss {partial['loss'] / partial['seen']:.3f} acc {100 * partial['correct'] / partial['seen']:.1f}%"
    return f"{status} {partial['seen'] / max(partial['time'], 1e-9):.0f} img/s" if show_rate else status


# ------------------------------------------------------------------------------------ epochs, stop, resume


class TrainingInterrupted(Interrupted):
    """Raised after the state was saved because of SIGINT/SIGTERM; exit code 128+signal, as shells do."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(signum, f"interrupted by signal {signum}; progress saved to {checkpoint}", hint="continue with --resume")


@dataclass
class LoopState:
    """The loop's part of a resume payload. ``epoch``/``step``: where this launch starts (0, 0 when
    fresh); ``history``: one row per finished epoch; ``partial``: the sums of the epoch in progress."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=fresh_partial)

    @classmethod
    def from_payload(cls, state: dict | None) -> "LoopState":
        if state is None:
            return cls()
        return cls(state["epoch"], state.get("step", 0), list(state.get("history", [])), dict(state.get("partial", fresh_partial())))


def start_loop(
    state: dict | None, optimization: Optimization, dataset: ImageDataset, batch_size: int, seed: int,
    normalization: Normalization, device: torch.device, dist: "DistributedContext", channels_last: bool = False,
) -> tuple[LoopState, SeededBatches]:
    """Where a run starts and its batches: from zero when ``state`` is None, else at the resume payload's
    position, with its optimizer, scheduler and grad-scaler state restored into ``optimization``."""
    loop_state = LoopState.from_payload(state)
    if state is not None:
        optimization.restore(state)
    images = to_tensor_images(dataset.train_images, device)
    labels = torch.from_numpy(dataset.train_labels).to(device)
    batches = SeededBatches(images, labels, batch_size, seed, normalization, device, channels_last, dist.rank, dist.world_size)
    return loop_state, batches


@dataclass
class EpochLoop:
    """How a run's epochs go: its batches, its optimizer step, how it counts, and where a stop saves.

    ``save_stopped(epoch, step)`` writes the resume payload at the batch reached (rank 0 only, as the
    caller decides) before :class:`TrainingInterrupted` names ``saved_to``.
    """

    batches: SeededBatches
    optimization: Optimization
    count: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], BatchSums]
    save_stopped: Callable[[int, int], None]
    saved_to: Path
    epochs: int
    label: str = "epoch"  # the progress bar's "epoch 2/30"
    show_rate: bool = True  # images/s in the progress bar
    hooks: list[StepHook] = field(default_factory=list)


def epochs_to_run(state: LoopState, epochs: int) -> Iterator[tuple[int, int]]:
    """(epoch, first step) of each epoch left; a new epoch's partial sums start from zero."""
    start_epoch, start_step = state.epoch, state.step
    for epoch in range(start_epoch, epochs):
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            state.partial = fresh_partial()
        yield epoch, first_step


def train_one_epoch(loop: EpochLoop, state: LoopState, epoch: int, first_step: int, stop: StopRequest) -> None:
    """Steps ``first_step``.. of ``epoch``, adding to ``state.partial``; on SIGINT/SIGTERM (``stop``)
    saves at the batch boundary reached and raises :class:`TrainingInterrupted`."""
    batches, partial = loop.batches, state.partial
    order = batches.order(epoch)
    with progress.bar(f"{loop.label} {epoch + 1}/{loop.epochs}", batches.steps_per_epoch) as bar:
        bar.advance(first_step)
        for step in range(first_step, batches.steps_per_epoch):
            tic = time.perf_counter()
            inputs, targets = batches.batch(order, epoch, step)
            loss, logits = train_step(loop.optimization, inputs, targets, epoch, step)
            loss_sum, correct, seen = loop.count(loss, logits, targets)
            partial["loss"] += loss_sum
            partial["correct"] += correct
            partial["seen"] += seen
            if batches.device.type == "cuda":
                torch.cuda.synchronize(batches.device)
            partial["time"] += time.perf_counter() - tic
            bar.advance(1, _status(partial, loop.show_rate))
            for hook in loop.hooks:
                hook(epoch, step)
            if stop.signal_number is not None:
                loop.save_stopped(epoch, step + 1)
                raise TrainingInterrupted(stop.signal_number, loop.saved_to)
