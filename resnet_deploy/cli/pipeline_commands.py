"""``pipeline``: the whole flow in one command (train or reuse, quantize, export, bench, report).

It measures and gates with ``bench``'s own options (``bench_commands.bench_options``, verifying by
default) and prints ``bench``'s summary; every stage is ``resnet_deploy.pipeline``'s.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from ..errors import UserError
from ..pipeline import INT8_TARGETS, QUANTIZATION_CHOICES
from ..quantize_choices import DEFAULT_METHOD, METHODS
from .bench_commands import bench_options, make_bench_config, print_bench_summary
from .options import CHECKPOINT, dataset_options, no_empty_folders_left


@click.command()
@click.option("--name", "run_name", required=True, help="Run name: runs/NAME, calibration/NAME-*, exports/NAME[-cpu], benchmarks/results/NAME.")
@click.option("--checkpoint", type=CHECKPOINT, help="Start from this FP32 checkpoint, a file or pretrained:NAME [pretrained:MODEL, the shipped one].")
@click.option("--model", default="resnet20", show_default=True, help="Model: its shipped checkpoint pretrained:MODEL is used, or with --train "
              "it is trained (resnet20/32/44/56/110, resnet18..152, plainN).")
@click.option("--train", "train_from_scratch", is_flag=True, help="Train --model from scratch (--epochs, --lr, ...) instead of using its shipped checkpoint.")
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(min=1), help="With --train: training epochs.")
@click.option("--train-batch-size", default=128, show_default=True, type=click.IntRange(min=1), help="With --train: training batch size.")
@click.option("--lr", default=0.1, show_default=True, type=float, help="With --train: peak training learning rate.")
@click.option("--seed", default=0, show_default=True, type=int, help="With --train: seed of the initial weights and the data order.")
@click.option("--train-device", default="auto", show_default=True, help="With --train: training device (auto, cpu, cuda, cuda:N).")
@dataset_options
@click.option("--quantization", type=click.Choice(QUANTIZATION_CHOICES), default="ptq", show_default=True, help="int8 by post-training calibration, quantization-aware fine-tuning, or both (exports use QAT's then).")
@click.option("--int8-targets", default=",".join(INT8_TARGETS), show_default=True, help="int8 schemes: cpu (U8S8, ONNX Runtime's fast CPU path), tensorrt (symmetric S8S8).")
@click.option("--calib-method", type=click.Choice(METHODS), default=None, help=f"Calibration method of PTQ and of QAT's starting observers [{DEFAULT_METHOD}, quantize's default] (see resnet-deploy quantize --help).")
@click.option("--calib-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Calibration images of PTQ and of QAT's starting observers (from the training split).")
@click.option("--qat-epochs", default=2, show_default=True, type=click.IntRange(min=1), help="With --quantization qat/both: fine-tuning epochs.")
@click.option("--qat-lr", default=1e-3, show_default=True, type=float, help="With --quantization qat/both: fine-tuning learning rate.")
@click.option("--fp16/--no-fp16", "export_fp16", default=True, show_default=True, help="Also export FP16 ONNX (and engine).")
@click.option("--tensorrt/--no-tensorrt", "build_tensorrt", default=None, help="Build TensorRT engines [when TensorRT can build here].")
@click.option("--compute-capability", help="Target GPU of the engines, e.g. 8.9 (TensorRT-RTX builds without a GPU).")
@click.option("--max-batch", default=256, show_default=True, type=click.IntRange(min=1), help="Largest batch of the engines' profile.")
@bench_options(verify_default=True)
@click.option("--force", is_flag=True, help="Redo every stage even when its artifacts are current.")
@click.option("--workdir", default=".", show_default=True, type=click.Path(), help="Folder holding runs/, calibration/, exports/, benchmarks/results/.")
def pipeline(run_name, checkpoint, model, train_from_scratch, epochs, train_batch_size, lr, seed, train_device, load_data, quantization, int8_targets,
             calib_method, calib_size, qat_epochs, qat_lr, export_fp16, build_tensorrt, compute_capability, max_batch,
             force, workdir, **options):
    """Start from the shipped pretrained:MODEL (or --checkpoint, or train with --train), quantize,
    export, bench every backend and write the verified report.

    Each stage is skipped when its inputs (settings, data, files, by sha256) and outputs are unchanged
    since the last run; --force redoes it. Stages that cannot run here (no TensorRT, no GPU) are listed
    as skipped with the reason in the report. Every option is checked before the first stage runs.
    The report is verified against the thresholds unless --no-verify: exit 1 when one is missed.
    SIGINT/SIGTERM during training save the progress (rerun the same command to continue); during
    the bench stage they write the partial results, as `bench` does; either way exit 130/143.

    \b
    Examples:
      resnet-deploy pipeline --data-dir ../shared/datasets/cifar10-jpeg.tar.xz --name r20    (the shipped ResNet20)
      resnet-deploy pipeline --train --model resnet20 --epochs 15 --data-dir DATA --name r20-scratch
      resnet-deploy pipeline --checkpoint runs/r20/last.pt --data-dir DATA --name r20 --quantization both
      resnet-deploy pipeline --train --dataset synthetic --epochs 1 --train-subset 512 --test-subset 256 --name smoke
    """
    from ..bench import raise_if_failed
    from ..pipeline import PipelineConfig, raise_if_stages_failed, run_pipeline

    runner_options, settings, thresholds = make_bench_config(options)
    targets = tuple(part.strip().lower() for part in int8_targets.split(",") if part.strip())
    starting = _starting_checkpoint(checkpoint, model, train_from_scratch)
    _check_pipeline_options(train_from_scratch, model, lr, seed, train_device, quantization, qat_lr, compute_capability, build_tensorrt)
    config = PipelineConfig(
        name=run_name, workdir=Path(workdir), checkpoint=starting, model=model, epochs=epochs,
        batch_size=train_batch_size, lr=lr, seed=seed, train_device=train_device, quantization=quantization,
        int8_targets=targets, calib_method=calib_method, calib_size=calib_size, qat_epochs=qat_epochs, qat_lr=qat_lr,
        fp16=export_fp16, tensorrt=build_tensorrt, compute_capability=compute_capability, max_batch=max_batch,
        runner_options=runner_options, bench_settings=settings, thresholds=thresholds, force=force,
        command=["resnet-deploy", *sys.argv[1:]],
    )
    config.validate()  # run_pipeline checks again; here it comes before any folder is made
    load_data.check()
    with no_empty_folders_left(*_folders_written(config)):
        result = run_pipeline(config, _size_checked(load_data, train_from_scratch, train_batch_size, quantization, calib_size))
    click.echo("stages:", err=True)
    for stage in result.stages:
        click.echo(f"  {stage.name:<22} {stage.status:<8} {stage.reason or ''}", err=True)
    if result.results is not None:
        print_bench_summary(result.results, result.paths)
    raise_if_stages_failed(result)
    if result.results is not None:
        raise_if_failed(result.results)


def _size_checked(load_data, train_from_scratch: bool, train_batch_size: int, quantization: str, calib_size: int):
    """``load_data`` with the options that depend on the dataset's size checked before the first stage."""

    def load_checked_data():
        dataset = load_data()
        available = len(dataset.train_images)
        if train_from_scratch and train_batch_size > available:
            raise UserError(f"--train-batch-size {train_batch_size} is larger than the {available} training images; use at most {available}")
        if quantization in ("ptq", "both") and calib_size > available:
            raise UserError(f"--calib-size {calib_size} exceeds the {available} training images")
        return dataset

    return load_checked_data


def _folders_written(config) -> list[Path]:
    """Every folder a pipeline run may create: removed again when a failed run left them empty."""
    return [config.run_dir, config.results_dir, config.export_dir("tensorrt"), config.export_dir("cpu"),
            *(config.calibration_dir(kind, target) for kind in ("ptq", "qat") for target in INT8_TARGETS)]

# Options that only shape training: given without --train they would be silently ignored.
TRAINING_OPTIONS = ("epochs", "train_batch_size", "lr", "seed", "train_device")
# Options of one kind of quantization, and the --quantization values that run it.
QAT_OPTIONS = (("qat_epochs", "qat_lr"), ("qat", "both"))
PTQ_OPTIONS = (("calib_method", "calib_size"), ("ptq", "both"))


def _given(ctx: click.Context, names) -> list[str]:
    """The options of ``names`` given on the command line, spelled as typed."""
    return [f"--{name.replace('_', '-')}" for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]


def _check_pipeline_options(train_from_scratch: bool, model: str, lr: float, seed: int, train_device: str, quantization: str,
                            qat_lr: float, compute_capability: str | None, build_tensorrt: bool | None) -> None:
    """Every check a later stage would make of the pipeline's own options, made before the first stage,
    with each option named as the pipeline spells it (--train-batch-size, not train's --batch-size)."""
    ctx = click.get_current_context()
    for (names, kinds), what in ((QAT_OPTIONS, "quantization-aware fine-tuning"), (PTQ_OPTIONS, "post-training calibration")):
        if quantization not in kinds and (given := _given(ctx, names)):
            raise UserError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to {what}, "
                            f"which --quantization {quantization} does not run",
                            hint=f"use --quantization {' or '.join(kinds)}, or drop {', '.join(given)}")
    for option, value, used in (("--lr", lr, train_from_scratch), ("--qat-lr", qat_lr, quantization in QAT_OPTIONS[1])):
        if used and not (value > 0 and math.isfinite(value)):
            raise UserError(f"{option} must be a positive number, got {value}")
    if train_from_scratch:
        from ..models import parse_model_name
        from ..train import resolve_device

        try:
            parse_model_name(model)
        except UserError as exc:
            raise UserError(f"--model: {exc}") from None
        if not 0 <= seed < 2**32:
            raise UserError(f"--seed must be in 0..{2**32 - 1}, got {seed}")
        try:
            resolve_device(train_device)
        except UserError as exc:  # train's own message names train's --device
            raise UserError(str(exc.args[0]).replace("--device", "--train-device"),
                            hint=exc.hint.replace("--device", "--train-device") if exc.hint else None) from None
    if compute_capability is not None:
        from ..tensorrt import parse_compute_capability

        parse_compute_capability(compute_capability)
    if build_tensorrt:  # --tensorrt makes a missing TensorRT an error: say so now, not after training
        from ..tensorrt import runtime

        runtime.import_tensorrt()
        if runtime.current_gpu() is None and not compute_capability:
            raise UserError("--tensorrt: no CUDA GPU here and no --compute-capability given",
                            hint="name the target GPU with --compute-capability (TensorRT-RTX), or drop --tensorrt")


def _starting_checkpoint(checkpoint: Path | None, model: str, train_from_scratch: bool) -> Path | str | None:
    """What the pipeline starts from: --checkpoint, else the shipped pretrained:MODEL; None (train) with --train."""
    from ..zoo import PREFIX

    ctx = click.get_current_context()
    if train_from_scratch:
        if checkpoint is not None:
            raise UserError("--train trains a new model and --checkpoint reuses one: give one of them")
        return None
    if checkpoint is not None and ctx.get_parameter_source("model") is ParameterSource.COMMANDLINE:
        raise UserError("--model names the shipped model to start from (or, with --train, the one to train); "
                        "--checkpoint brings its own", hint="drop --model or --checkpoint")
    ignored = [f"--{name.replace('_', '-')}" for name in TRAINING_OPTIONS
               if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if ignored:
        raise UserError(f"training option(s) {', '.join(ignored)} given without --train",
                        hint=f"add --train to train {model} from scratch, or drop them to start from {checkpoint or PREFIX + model}")
    return checkpoint if checkpoint is not None else PREFIX + model


COMMANDS: list = [pipeline]
