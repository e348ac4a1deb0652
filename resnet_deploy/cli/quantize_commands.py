"""``quantize``: FP32 checkpoint -> int8 model (PTQ or QAT) with TensorRT- or CPU-style Q/DQ."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import logs
from ..errors import UserError
from ..overwrite_guard import checkpoint_differences, refuse_overwrite
from ..quantize_choices import DEFAULT_METHOD, DEFAULT_PERCENTILE, DEFAULT_RESIDUAL_CONV_INPUT, METHODS, RESIDUAL_CONV_INPUTS, TARGETS
from ..run_names import check_run_name, quantize_run_name
from .options import CHECKPOINT, dataset_options, echo_json, force_option, no_empty_folders_left


@click.command()
@click.argument("checkpoint", type=CHECKPOINT)
@dataset_options
@click.option("--target", type=click.Choice(TARGETS), default="tensorrt", show_default=True,
              help="tensorrt: signed int8, symmetric, zero-point 0 (TensorRT's explicit quantization). "
              "cpu: U8S8 (uint8 asymmetric activations, int8 per-channel weights) for x86 int8 kernels / ONNX Runtime.")
@click.option("--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
              help="Activation range calibration: minmax, ema (moving-average min-max), percentile, "
              "entropy (TensorRT's KL), mse (expected quantization error).")
@click.option("--percentile", default=DEFAULT_PERCENTILE, show_default=True, type=float, help="For --method percentile.")
@click.option("--calib-size", default=1000, show_default=True, type=int,
              help="Calibration images, taken deterministically from the TRAINING split (never test).")
@click.option("--keep-float", default="", help="Comma-separated layers to keep in floating point: "
              "'first' (first conv), 'last' (last FC) or names such as layers.2.2.conv2.")
@click.option("--residual-conv-input", type=click.Choice(RESIDUAL_CONV_INPUTS), default=DEFAULT_RESIDUAL_CONV_INPUT, show_default=True,
              help="How each residual Add reads the convolution before it. int8: quantized (both Add inputs int8; ONNX Runtime "
              "runs every conv as QLinearConv). float: left unquantized, only the shortcut input is; the ReLU after the Add "
              "still quantizes the sum. float is what OpenVINO's CPU plugin computes exactly: it fuses the Add into the conv and "
              "skips the rounding of a quantizer between them. ONNX Runtime then runs those convs in float.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="PTQ: re-centre every layer's output mean on the calibration images (float bias, free at inference).")
@click.option("--output", "-o", type=click.Path(), help="Artifact directory [calibration/<run-name>].")
@click.option("--run-name", help="Name of the artifact directory under calibration/ [<checkpoint dir>-<target>].")
@click.option("--eval-batch-size", default=500, show_default=True, type=click.IntRange(min=1), help="Test images per forward pass of the FP32/int8 comparison.")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning instead of post-training calibration.")
@click.option("--epochs", default=3, show_default=True, type=int, help="QAT: fine-tuning epochs.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="QAT: learning rate (cosine-decayed).")
@click.option("--batch-size", default=128, show_default=True, type=int, help="QAT: batch size.")
@click.option("--freeze-observers-epoch", default=2, show_default=True, type=int,
              help="QAT: from this epoch (0-based) on, quantization ranges stop moving.")
@click.option("--freeze-bn-epoch", default=1, show_default=True, type=int,
              help="QAT: from this epoch (0-based) on, BatchNorm statistics stop updating.")
@click.option("--resume", is_flag=True, help="QAT: continue from OUTPUT/qat_state.pt after an interruption.")
@click.option("--device", default="cpu", show_default=True,
              help="QAT: where the fine-tuning runs: auto (a CUDA GPU if there is one, else cpu), cpu, cuda, cuda:N; "
              "under torchrun on GPUs each rank takes cuda:LOCAL_RANK. Calibration and the int8 conversion stay on the CPU.")
@click.option("--sensitivity", is_flag=True, help="Also rank layers by the accuracy they lose when quantized "
              "and write sensitivity.json with a mixed-precision plan.")
@click.option("--sensitivity-mode", type=click.Choice(["only", "leave-out"]), default="only", show_default=True,
              help="only: quantize one layer at a time. leave-out: quantize all but one layer.")
@click.option("--sensitivity-images", default=2000, show_default=True, type=click.IntRange(min=100),
              help="Test images per sensitivity evaluation (the full set is used for the final model).")
@click.option("--max-float-layers", default=2, show_default=True, type=click.IntRange(min=0),
              help="Sensitivity: at most this many layers in the mixed-precision plan.")
@force_option(what="the artifact directory")
def quantize(checkpoint, load_data, target, method, percentile, calib_size, keep_float, residual_conv_input, bias_correction, output, run_name, eval_batch_size,
             qat, epochs, lr, batch_size, freeze_observers_epoch, freeze_bn_epoch, resume, device, sensitivity, sensitivity_mode,
             sensitivity_images, max_float_layers, force):
    """Quantize CHECKPOINT to int8 and measure it against FP32 on the full test split.

    Writes calibration/<run-name>/: manifest.json (checkpoint sha256, settings, metrics),
    program.pt2 (torch.export program with Q/DQ, dynamic batch) and qparams.json (every scale and
    zero-point). Loading it with a different checkpoint is refused. A directory holding an artifact
    of another checkpoint is not overwritten without --force; one of the same checkpoint is.

    --qat also runs under torchrun (DistributedDataParallel, each rank on its slice of the global
    --batch-size, rank 0 writes the artifact), as train does.

    \b
    Examples:
      resnet-deploy quantize runs/r20/best.pt --data-dir ../shared/datasets/cifar10-jpeg.tar.xz
      resnet-deploy quantize runs/r20/best.pt --target cpu --method percentile --data-dir DATA
      resnet-deploy quantize runs/r20/best.pt --keep-float first,last --data-dir DATA
      resnet-deploy quantize runs/r20/best.pt --qat --epochs 3 --lr 1e-3 --data-dir DATA
      resnet-deploy quantize runs/r20/best.pt --qat --device cuda --data-dir DATA
      resnet-deploy quantize runs/r20/best.pt --sensitivity --data-dir DATA
    """
    from .. import quantize as quantize_stage

    if qat and sensitivity:
        raise UserError("--sensitivity analyses post-training quantization; run it without --qat")
    if not qat and resume:
        raise UserError("--resume continues an interrupted --qat run; add --qat")
    _refuse_given(QAT_ONLY, unless=qat, why="only --qat (quantization-aware fine-tuning) reads {options}",
                  hint="add --qat, or drop {options}")
    _refuse_given(PTQ_ONLY, unless=not qat, why="{options}: QAT has no bias-correction pass", hint="drop {options} or --qat")
    _refuse_given(("residual_conv_input",), unless=not sensitivity,
                  why="{options}: --sensitivity ranks layers with the default placement (int8 residual inputs) only",
                  hint="run the sensitivity analysis without {options}")
    _refuse_given(SENSITIVITY_ONLY, unless=sensitivity, why="only --sensitivity reads {options}", hint="add --sensitivity, or drop {options}")
    _refuse_given(("percentile",), unless=method == "percentile", why=f"{{options}} is read by --method percentile only, not {method}",
                  hint="add --method percentile, or drop {options}")
    _check_device(qat, device)
    keep = [part.strip() for part in keep_float.split(",") if part.strip()]
    name = quantize_run_name(checkpoint, target, qat) if run_name is None else check_run_name(run_name, "--run-name")
    output_dir = Path(output) if output else Path("calibration") / name
    load_data.check()
    command = "resnet-deploy " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    common = dict(target=target, method=method, calib_size=calib_size, keep_float=keep, percentile=percentile,
                  residual_conv_input=residual_conv_input,
                  eval_batch_size=eval_batch_size, command=command)
    qat_options = dict(epochs=epochs, lr=lr, batch_size=batch_size, freeze_observers_epoch=freeze_observers_epoch,
                       freeze_bn_epoch=freeze_bn_epoch, resume=resume, device=device) if qat else None
    with _rank_layout(qat, device) as dist:
        loaded, dataset, metrics = _quantize_as_rank(dist, checkpoint, load_data, output_dir, force, qat_options, bias_correction, common)
    if not dist.is_main:
        return  # rank 0 writes the artifact and prints the result
    result = {"artifact": str(output_dir), "target": target, "method": method, **_headline(metrics)}
    if sensitivity:
        report = quantize_stage.sensitivity_analysis(
            loaded, dataset, output_dir / "sensitivity.json", target=target, method=method, calib_size=calib_size,
            percentile=percentile, mode=sensitivity_mode, eval_images=sensitivity_images, max_float_layers=max_float_layers,
        )
        result["sensitivity"] = {"report": str(output_dir / "sensitivity.json"), "plan": report["plan"]}
    echo_json(result)


def _quantize_as_rank(dist, checkpoint, load_data, output_dir: Path, force: bool, qat_options: dict | None, bias_correction: bool, common: dict):
    """Load the checkpoint and data, refuse another run's folder, quantize (QAT with ``qat_options``,
    else PTQ); returns (loaded, dataset, metrics). Under torchrun every rank runs it, rank 0 writes."""
    from ..checkpoint import check_dataset_matches, load_checkpoint
    from .. import quantize as quantize_stage

    if not dist.is_main:
        logs.quiet()
    loaded = load_checkpoint(checkpoint)
    refuse_overwrite(output_dir, "manifest.json", checkpoint_differences(checkpoint, loaded.sha256), what="a quantize artifact",
                     force=force, instead="choose another --output or --run-name")
    dataset = load_data()
    check_dataset_matches(loaded, dataset.classes, dataset.name)
    with no_empty_folders_left(output_dir if dist.is_main else None):
        if qat_options is not None:
            metrics = quantize_stage.quantize_qat(loaded, dataset, output_dir, dist=dist, **qat_options, **common)
        else:
            metrics = quantize_stage.quantize_ptq(loaded, dataset, output_dir, bias_correction=bias_correction, **common)
    return loaded, dataset, metrics


def _check_device(qat: bool, device: str) -> None:
    """--device cuda without a GPU (or not a device at all) is refused before anything is loaded."""
    if qat:
        from ..loop import resolve_device

        resolve_device(device)


def _rank_layout(qat: bool, device: str):
    """QAT: torchrun's rank layout (rank 0 of 1 outside torchrun), as train's. PTQ: one process."""
    from ..distributed import DistributedContext, context_from_environment

    return context_from_environment(device=device) if qat else contextlib.nullcontext(DistributedContext())


# Options that only one mode reads: given in another mode they would be silently ignored.
QAT_ONLY = ("epochs", "lr", "batch_size", "freeze_observers_epoch", "freeze_bn_epoch", "resume", "device")
PTQ_ONLY = ("bias_correction",)
SENSITIVITY_ONLY = ("sensitivity_mode", "sensitivity_images", "max_float_layers")


def _refuse_given(names: tuple[str, ...], *, unless: bool, why: str, hint: str) -> None:
    """Exit 2 naming, as typed, each option of ``names`` given on the command line, unless ``unless``."""
    if unless:
        return
    ctx = click.get_current_context()
    given = ", ".join(_spelled(ctx, name) for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE)
    if given:
        raise UserError(why.format(options=given), hint=hint.format(options=given))


def _spelled(ctx: click.Context, name: str) -> str:
    """How the user wrote an option: --no-bias-correction rather than bias_correction."""
    param = next(p for p in ctx.command.params if p.name == name)
    value = ctx.params.get(name)
    if getattr(param, "secondary_opts", None) and value is False:
        return param.secondary_opts[0]
    return param.opts[0]


@click.command("quantize-info")
@click.argument("artifact", type=click.Path())
@click.option("--checkpoint", type=CHECKPOINT, help="Also check that the artifact was made from this FP32 checkpoint.")
def quantize_info(artifact, checkpoint):
    """Verify a quantize artifact (file hashes, and the checkpoint's when given) and summarise it.

    Exits 2 with a one-line reason when the artifact is incomplete, corrupted, or belongs to another
    checkpoint.

    \b
    Example:
      resnet-deploy quantize-info calibration/r20-tensorrt --checkpoint runs/r20/best.pt
    """
    from ..quantize import load_quantized
    from ..quantize.artifact import summarize_qparams

    quantized = load_quantized(artifact, checkpoint=checkpoint)
    manifest = quantized.manifest
    echo_json(
        {
            "artifact": str(artifact),
            "verified": {"files": True, "checkpoint": checkpoint is not None},
            "checkpoint": manifest["checkpoint"],
            "model": manifest["model"],
            "target": quantized.target,
            "method": manifest.get("method"),
            "calib_size": manifest.get("calib_size"),
            "keep_float": manifest.get("keep_float"),
            "residual_conv_input": quantized.residual_conv_input,
            "qat": manifest.get("qat") is not None,
            "qparams": summarize_qparams(quantized.qparams),
            **_headline(quantized.metrics),
            "versions": manifest.get("versions"),
        }
    )


def _headline(metrics: dict) -> dict:
    if "int8" not in metrics:
        return {"metrics": metrics}
    return {
        "fp32_top1": round(metrics["fp32"]["top1"], 3),
        "int8_top1": round(metrics["int8"]["top1"], 3),
        "delta_top1": round(metrics["delta_top1"], 3),
        "agreement_top1": round(metrics["agreement_top1"], 3),
        "test_images": metrics.get("test_images"),
        "calibration_s": round(metrics.get("timings", {}).get("calibration_s", float("nan")), 2),
    }


COMMANDS = [quantize, quantize_info]
