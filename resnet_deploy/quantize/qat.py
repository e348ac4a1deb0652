"""Quantization-aware training: fine-tune the FP32 checkpoint with fake-quant in the graph.

Flow (torchao PT2E): torch.export in train mode -> ``prepare_qat_pt2e`` with the same quantizer as PTQ
(Conv and BN stay separate and are trained folded: BN statistics keep updating) -> a calibration pass
that sets every activation range with the chosen ``--method`` (as PTQ would) -> fine-tuning with a
small, cosine-decayed learning rate -> ``convert_pt2e`` -> evaluation -> the same artifact as PTQ.

During fine-tuning, activation ranges follow a moving average of each batch's min/max starting from
the calibrated range, weight ranges follow the weights; from ``freeze_observers_epoch`` on every range is
fixed, and from ``freeze_bn_epoch`` on BatchNorm uses its running statistics (the network then trains
against exactly the arithmetic it will be deployed with).

The fine-tuning runs on ``train``'s loop core (``resnet_deploy.loop``: seeded batch order, augmentation,
optimizer step, partial metrics, stop and resume) on ``device`` (the CPU by default), and under torchrun
with ``train``'s rank layout (``resnet_deploy.distributed``): DistributedDataParallel around the prepared
graph module, each rank on its slice of the same global batch, only rank 0 writing. Capture, calibration
and ``convert_pt2e`` stay on the CPU whatever the device (the calibration histograms are numpy), so the
artifact is the same CPU program either way. With more than one rank, BatchNorm in training mode
normalises with each rank's own slice (in the graph BN is an op, so it cannot be synchronised) and the
activation ranges follow rank 0's slice (DDP broadcasts rank 0's buffers before each forward); once BN
and the observers are frozen, the ranks compute exactly one process's step.

Resumable like training: every random draw depends on (seed, epoch, step); ``qat_state.pt`` is written
after each epoch and, on SIGINT/SIGTERM, at the next batch boundary; ``resume=True`` (or a torchrun
restart) continues from it and gives the same weights as an uninterrupted run. A state saved by any
number of ranks or on any device resumes on any other.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch

from ..checkpoint import LoadedModel
from ..data import ImageDataset
from ..distributed import DistributedContext
from ..errors import UserError
from ..fileio import torch_load_safe, torch_save_atomic
from ..loop import (
    EpochLoop,
    LoopState,
    Optimization,
    SeededBatches,
    decay_groups,
    epochs_to_run,
    local_sums,
    partial_loss,
    partial_top1,
    steps_per_epoch,
    start_loop,
    sums_over_ranks,
    train_one_epoch,
)
from ..quantize_choices import DEFAULT_RESIDUAL_CONV_INPUT
from ..signals import StopRequest
from . import calibration
from .artifact import register_quant_ops
from .bias_correction import snap_biases_to_int32_grid
from .calibration import calibration_batches, run_calibration
from .capture import capture_for_training
from .ptq import DEFAULT_CALIB_SIZE, check_run, finish
from .quantizer import build_quantizer, check_residual_conv_input, resolve_keep_float

log = logging.getLogger(__name__)

STATE_FILE = "qat_state.pt"
STATE_FORMAT = "resnet-deploy/qat-state"


@dataclass
class QatConfig:
    """Options of ``quantize --qat``; saved in the state file so a resume continues the same run."""

    target: str = "tensorrt"
    method: str = calibration.DEFAULT_METHOD
    percentile: float = calibration.DEFAULT_PERCENTILE
    calib_size: int = DEFAULT_CALIB_SIZE
    keep_float: tuple[str, ...] = ()
    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT  # absent from older state files: their runs used int8
    epochs: int = 3
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    freeze_observers_epoch: int = 2
    freeze_bn_epoch: int = 1
    seed: int = 0

    def validate(self) -> None:
        check_residual_conv_input(self.residual_conv_input)
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.batch_size < 2:
            raise UserError(f"--batch-size must be at least 2 (BatchNorm needs a batch), got {self.batch_size}")
        for name in ("freeze_observers_epoch", "freeze_bn_epoch"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0 (0-based epoch), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["keep_float"] = list(self.keep_float)
        return data


def quantize_qat(
    loaded: LoadedModel,
    dataset: ImageDataset,
    output_dir: str | Path,
    *,
    target: str = "tensorrt",
    method: str = calibration.DEFAULT_METHOD,
    calib_size: int = DEFAULT_CALIB_SIZE,
    keep_float: Iterable[str] = (),
    percentile: float = calibration.DEFAULT_PERCENTILE,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    freeze_observers_epoch: int = 2,
    freeze_bn_epoch: int = 1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    resume: bool = False,
    eval_batch_size: int = 500,
    evaluate: bool = True,
    command: str | None = None,
    device: str = "cpu",
    dist: DistributedContext | None = None,
    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT,
) -> dict:
    """Quantization-aware fine-tuning of ``loaded`` for ``target`` on ``device`` (auto, cpu, cuda,
    cuda:N), as rank ``dist`` (one process by default); writes the same artifact as
    :func:`quantize_ptq` (plus ``qat_state.pt`` for ``resume``) and returns its metrics, which include
    the per-epoch training history. Ranks other than 0 write nothing and return ``{}``."""
    register_quant_ops(required=True)
    dist = dist or DistributedContext()
    scheme, output_dir = check_run(
        loaded, dataset, output_dir, target, method, percentile, calib_size, needed_bytes=32 << 20, output_checks=dist.is_main
    )
    target_device = dist.device_for(device)
    config = QatConfig(
        target=target, method=method, percentile=percentile, calib_size=calib_size,
        keep_float=tuple(resolve_keep_float(loaded.model, keep_float)), residual_conv_input=residual_conv_input, epochs=epochs, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, freeze_observers_epoch=freeze_observers_epoch,
        freeze_bn_epoch=freeze_bn_epoch, seed=seed,
    )
    config.validate()
    state_path = output_dir / STATE_FILE
    resume = resume or dist.restart_count > 0  # a torchrun restart resumes by itself, as train does
    state = dist.read_on_main(lambda: _read_state(state_path, loaded) if resume and state_path.is_file() else None)
    if resume and state is None:
        log.info(f"--resume: no QAT state at {state_path}, starting fresh")
    if state is not None:
        config = _resumed_config(state, epochs)
    _check_ranks(config.batch_size, dist.world_size)
    run = _start_run(loaded, dataset, scheme, config, state, state_path, target_device, dist)
    tic_all = time.perf_counter()
    _fine_tune(run)
    if not dist.is_main:
        return {}
    return _convert_and_finish(run, dataset, output_dir, scheme, tic_all, eval_batch_size, evaluate, command)


@dataclass
class _QatRun:
    """One launch of :func:`quantize_qat`: the prepared model, its optimization and loop position."""

    loaded: LoadedModel
    config: QatConfig
    prepared: torch.fx.GraphModule  # unwrapped: the optimizer, the state file and convert use it
    batches: SeededBatches
    optimization: Optimization  # its model is the DDP wrapper under torchrun
    state: LoopState
    state_path: Path
    dist: DistributedContext
    calibration_seconds: float = 0.0

    def save_state(self, epoch: int, step: int) -> None:
        """qat_state.pt at batch ``step`` of ``epoch``, written by rank 0 only."""
        if not self.dist.is_main:
            return
        torch_save_atomic(
            {
                "format": STATE_FORMAT,
                "checkpoint_sha256": self.loaded.sha256,
                "config": self.config.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.prepared.state_dict().items()},
                "optimizer": self.optimization.optimizer.state_dict(),
                "scheduler": self.optimization.scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": self.state.history,
                "partial": self.state.partial,
                "calibration_seconds": self.calibration_seconds,
            },
            self.state_path,
        )


def _resumed_config(state: dict, epochs: int) -> QatConfig:
    """The state's own options; only ``epochs`` comes from this launch (a resumed run may only be extended)."""
    saved = dict(state["config"])
    saved["epochs"] = epochs
    saved["keep_float"] = tuple(saved.get("keep_float", ()))
    config = QatConfig(**saved)
    config.validate()
    return config


def _check_ranks(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} must be divisible by the number of ranks ({world_size})")


def _start_run(
    loaded: LoadedModel, dataset: ImageDataset, scheme, config: QatConfig, state: dict | None, state_path: Path,
    device: torch.device, dist: DistributedContext,
) -> _QatRun:
    """The prepared QAT model (calibrated, or the state's) on ``device``, optimizer and loop position."""
    prepared, calibration_seconds = _prepared_model(loaded, dataset, scheme, config, state)
    prepared.to(device)
    train_model = dist.wrap(prepared, config, device)  # config has no sync_bn: DDP broadcasts rank 0's buffers
    optimization = _build_optimization(prepared, train_model, config, len(dataset.train_images), device)
    loop_state, batches = start_loop(state, optimization, dataset, config.batch_size, config.seed, loaded.normalization, device, dist)
    if state is not None:
        calibration_seconds = state.get("calibration_seconds", 0.0)
        log.info(f"resuming QAT from {state_path}: epoch {loop_state.epoch + 1}, batch {loop_state.step}")
    run = _QatRun(loaded, config, prepared, batches, optimization, loop_state, state_path, dist, calibration_seconds)
    if state is None and dist.max_restarts > 0:
        # Under torchrun with restarts, a restart before the first epoch ends must find this run's
        # starting state, never a qat_state.pt left in OUTPUT by an earlier run.
        run.save_state(0, 0)
    return run


def _prepared_model(loaded: LoadedModel, dataset: ImageDataset, scheme, config: QatConfig, state: dict | None) -> tuple[torch.fx.GraphModule, float]:
    """The prepared graph module on the CPU, calibrated (or holding the state's weights and ranges),
    and the seconds calibration took. Every rank builds the same one (DDP checks it)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    torch.manual_seed(config.seed)
    model = _fresh_fp32(loaded)
    quantizer = build_quantizer(scheme, config.method, config.percentile, config.keep_float, qat=True,
                                residual_conv_input=config.residual_conv_input)
    prepared = prepare_qat_pt2e(capture_for_training(model), quantizer)
    calibration_seconds = 0.0
    if state is None:
        move_exported_model_to_eval(prepared)
        calibration_seconds = _calibrate_ranges(prepared, calibration_batches(dataset, config.calib_size), loaded.normalization)
    else:
        prepared.load_state_dict(state["model"])
    _finish_calibration(prepared)
    return prepared, calibration_seconds


def _build_optimization(
    prepared: torch.fx.GraphModule, train_model: torch.nn.Module, config: QatConfig, num_train: int, device: torch.device
) -> Optimization:
    """SGD (no weight decay on BN and biases) with a cosine decay over the whole run, in fp32."""
    groups = decay_groups(prepared.named_parameters(), config.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    total_steps = config.epochs * steps_per_epoch(num_train, config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps))))
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # fp32: a pass-through
    return Optimization(train_model, optimizer, scheduler, scaler, device.type, what="QAT", divergence_hint="lower --lr")


def _fine_tune(run: _QatRun) -> None:
    """The QAT epochs left: BN frozen from ``freeze_bn_epoch``, ranges from ``freeze_observers_epoch``."""
    from torchao.quantization.pt2e import disable_observer, move_exported_model_to_eval, move_exported_model_to_train

    config, history, dist = run.config, run.state.history, run.dist
    # One process keeps its Python-float sums (its history stays bit for bit as it was); ranks add theirs up.
    count = local_sums if dist.world_size == 1 else sums_over_ranks(dist, config.batch_size)
    loop = EpochLoop(
        run.batches, run.optimization, count=count, save_stopped=run.save_state, saved_to=run.state_path,
        epochs=config.epochs, label="QAT epoch", show_rate=False, hooks=[dist.step_hook] if dist.step_hook else [],
    )
    with StopRequest() as stop:
        for epoch, first_step in epochs_to_run(run.state, config.epochs):
            if epoch >= config.freeze_bn_epoch:
                move_exported_model_to_eval(run.prepared)  # BN uses (and keeps) its running statistics
            else:
                move_exported_model_to_train(run.prepared)
            if epoch >= config.freeze_observers_epoch:
                run.prepared.apply(disable_observer)
            train_one_epoch(loop, run.state, epoch, first_step, stop)
            partial = run.state.partial
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": run.optimization.optimizer.param_groups[0]["lr"],
                    "train_loss": partial_loss(partial),
                    "train_top1": partial_top1(partial),
                    "epoch_time_s": partial["time"],
                    "bn_frozen": epoch >= config.freeze_bn_epoch,
                    "observers_frozen": epoch >= config.freeze_observers_epoch,
                }
            )
            run.save_state(epoch + 1, 0)
            log.info(f"QAT epoch {epoch + 1}: train loss {history[-1]['train_loss']:.3f}, train top-1 {history[-1]['train_top1']:.2f}%")


def _convert_and_finish(
    run: _QatRun, dataset: ImageDataset, output_dir: Path, scheme, tic_all: float, eval_batch_size: int, evaluate: bool, command: str | None
) -> dict:
    """convert_pt2e, then the same artifact and metrics as PTQ, with the QAT settings and history."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    config, history = run.config, run.state.history
    run.prepared.to("cpu")  # converted and saved on the CPU, as PTQ's: the same artifact from any device
    move_exported_model_to_eval(run.prepared)
    converted = convert_pt2e(run.prepared)
    timings = {
        "calibration_s": run.calibration_seconds,
        "qat_train_s": sum(h["epoch_time_s"] for h in history),
        "wall_s": time.perf_counter() - tic_all,
        "bias_grid": snap_biases_to_int32_grid(converted),  # see bias_correction: one model for every backend
    }
    settings = {
        "method": config.method,
        "percentile": config.percentile if config.method == "percentile" else None,
        "calib_size": config.calib_size,
        "calib_source": "training split, data.calibration_indices(seed=2016)",
        "keep_float": list(config.keep_float),
        "residual_conv_input": config.residual_conv_input,
        "qat": {**config.to_dict(), "history": history, "train_images": len(dataset.train_images)},
    }
    result = finish(run.loaded, dataset, output_dir, converted, scheme, settings, timings, eval_batch_size, evaluate, command)
    return result.metrics


def _fresh_fp32(loaded: LoadedModel) -> torch.nn.Module:
    """A copy of the FP32 model to fine-tune (the caller's model stays untouched)."""
    import copy

    return copy.deepcopy(loaded.model).cpu()


def _fake_quantizers(prepared: torch.nn.Module):
    from torchao.quantization.pt2e import FakeQuantizeBase

    return [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]


def _calibrate_ranges(prepared: torch.fx.GraphModule, images, normalization, batch_size: int = 100) -> float:
    """Observe the calibration images with fake-quant off (the FP32 activations, as PTQ sees them)."""
    from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant

    prepared.apply(disable_fake_quant)
    seconds = run_calibration(prepared, images, normalization, batch_size)
    prepared.apply(enable_fake_quant)
    return seconds


def _finish_calibration(prepared: torch.fx.GraphModule) -> None:
    """Switch activation observers from calibrating to tracking, and load their ranges into the
    fake-quantizers."""
    for fake_quant in _fake_quantizers(prepared):
        observer = fake_quant.activation_post_process
        if hasattr(observer, "finish_calibration"):
            observer.finish_calibration()
            scale, zero_point = observer.calculate_qparams()
            fake_quant.scale.resize_(scale.shape).copy_(scale)
            fake_quant.zero_point.resize_(zero_point.shape).copy_(zero_point)


def _read_state(path: Path, loaded: LoadedModel) -> dict:
    state = torch_load_safe(path, "QAT state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not a resnet-deploy QAT state file")
    if state.get("checkpoint_sha256") != loaded.sha256:
        raise UserError(
            f"{path} continues QAT of another checkpoint (sha256 {str(state.get('checkpoint_sha256'))[:12]}..., "
            f"not {loaded.sha256[:12]}... of {loaded.path})",
            hint="use another --output, or drop --resume to start over",
        )
    return state


