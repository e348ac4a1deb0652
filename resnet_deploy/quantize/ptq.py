"""Post-training quantization: capture, prepare, calibrate, convert, evaluate, save."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..checkpoint import LoadedModel, check_dataset_matches
from ..data import ImageDataset, Normalization
from ..evaluation import classification_metrics, predict_logits
from ..fileio import ensure_writable_dir, remove_stale_temporaries
from ..quantize_choices import DEFAULT_RESIDUAL_CONV_INPUT
from . import calibration
from .artifact import QuantizedModel, extract_qparams, register_quant_ops, save_artifact, summarize_qparams
from .bias_correction import snap_biases_to_int32_grid
from .calibration import calibration_batches, check_calib_size, run_calibration
from .capture import capture, export_program
from .quantizer import build_quantizer, check_residual_conv_input, resolve_keep_float, scheme_for

log = logging.getLogger(__name__)

DEFAULT_CALIB_SIZE = 1000
DEFAULT_BIAS_CORRECTION = True
BIAS_CORRECTION_IMAGES = 512


def ptq_convert(
    model: torch.nn.Module,
    calibration_images: np.ndarray,
    normalization: Normalization,
    *,
    target: str = "tensorrt",
    method: str = calibration.DEFAULT_METHOD,
    percentile: float = calibration.DEFAULT_PERCENTILE,
    keep_float: Iterable[str] = (),
    bias_correction: bool = False,
    bias_correction_mode: str = "sequential",
    calib_batch_size: int = 100,
    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT,
) -> tuple[torch.fx.GraphModule, dict]:
    """The library core of PTQ: returns the converted model (Q/DQ reference form) and timings.

    ``keep_float`` holds resolved layer names (see ``quantizer.resolve_layer_names``);
    ``bias_correction`` applies :mod:`.bias_correction` on the calibration images;
    ``residual_conv_input`` is the quantizer's (see :func:`.quantizer.annotate_graph`).
    """
    register_quant_ops(required=True)  # the install message when torchao is missing, before importing it
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    scheme = scheme_for(target)
    calibration.check_method(method, percentile)
    start = time.perf_counter()
    captured = capture(model)
    quantizer = build_quantizer(scheme, method, percentile, keep_float, residual_conv_input=residual_conv_input)
    prepared = prepare_pt2e(captured, quantizer)
    prepare_seconds = time.perf_counter() - start
    observe_seconds = run_calibration(prepared, calibration_images, normalization, calib_batch_size)
    tic = time.perf_counter()
    converted = convert_pt2e(prepared, fold_quantize=not bias_correction)
    convert_seconds = time.perf_counter() - tic
    timings = {
        "capture_prepare_s": prepare_seconds,
        "observe_s": observe_seconds,
        "convert_s": convert_seconds,  # includes computing ranges (histogram searches)
    }
    if bias_correction:
        from .bias_correction import correct_bias, fold_weight_quantization

        tic = time.perf_counter()
        # Channel means converge long before 1,000 images: half of them is plenty, and halves the cost.
        subset = calibration_images[: max(1, min(len(calibration_images), BIAS_CORRECTION_IMAGES))]
        timings["bias_correction"] = correct_bias(converted, subset, normalization, mode=bias_correction_mode)
        fold_weight_quantization(converted)
        timings["bias_correction_s"] = time.perf_counter() - tic
    # Last, so that no later change moves a bias off the grid again.
    timings["bias_grid"] = snap_biases_to_int32_grid(converted)
    timings["calibration_s"] = sum(v for k, v in timings.items() if k.endswith("_s"))
    return converted, timings


def compare_with_fp32(
    fp32_model: torch.nn.Module,
    int8_forward,
    images: np.ndarray,
    labels: np.ndarray,
    normalization: Normalization,
    batch_size: int = 500,
    fp32_logits: torch.Tensor | None = None,
) -> dict:
    """FP32 and int8 metrics on the same images, the top-1 delta and the argmax agreement."""
    if fp32_logits is None:
        fp32_model.eval()
        fp32_logits = predict_logits(fp32_model, images, normalization, batch_size)
    tic = time.perf_counter()
    int8_logits = predict_logits(int8_forward, images, normalization, batch_size)
    int8_seconds = time.perf_counter() - tic
    fp32 = classification_metrics(fp32_logits, labels)
    int8 = classification_metrics(int8_logits, labels)
    agreement = 100.0 * (fp32_logits.argmax(1) == int8_logits.argmax(1)).float().mean().item()
    return {
        "fp32": fp32,
        "int8": int8,
        "delta_top1": int8["top1"] - fp32["top1"],
        "agreement_top1": agreement,
        "logit_max_abs_error": (int8_logits - fp32_logits).abs().max().item(),
        "int8_reference_eval_s": int8_seconds,
    }


def quantize_ptq(
    loaded: LoadedModel,
    dataset: ImageDataset,
    output_dir: str | Path,
    *,
    target: str = "tensorrt",
    method: str = calibration.DEFAULT_METHOD,
    calib_size: int = DEFAULT_CALIB_SIZE,
    keep_float: Iterable[str] = (),
    percentile: float = calibration.DEFAULT_PERCENTILE,
    bias_correction: bool = DEFAULT_BIAS_CORRECTION,
    eval_batch_size: int = 500,
    evaluate: bool = True,
    command: str | None = None,
    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT,
) -> dict:
    """Post-training int8 quantization of ``loaded`` for ``target``; writes the artifact to
    ``output_dir`` (see :mod:`.artifact`) and returns its manifest's metrics.

    Calibration uses ``calib_size`` training images chosen by ``data.calibration_indices``; accuracy
    is measured on the whole test split of ``dataset``. ``bias_correction`` re-centres each layer's
    output on the calibration images (see :mod:`.bias_correction`).
    """
    result = run_ptq(
        loaded, dataset, output_dir, target=target, method=method, calib_size=calib_size, keep_float=keep_float,
        percentile=percentile, bias_correction=bias_correction, eval_batch_size=eval_batch_size, evaluate=evaluate,
        command=command, residual_conv_input=residual_conv_input,
    )
    return result.metrics


def check_run(
    loaded: LoadedModel,
    dataset: ImageDataset,
    output_dir: str | Path,
    target: str,
    method: str,
    percentile: float,
    calib_size: int,
    needed_bytes: int,
    output_checks: bool = True,
) -> tuple:
    """The checks PTQ and QAT make before any work (target, method, dataset, calibration size, a
    writable output folder with room); clears the temporaries a killed run left there, since the
    artifact folder is ours alone. Returns the int8 scheme and the output folder. ``output_checks``
    False (QAT's ranks other than 0, which write nothing): the folder is left alone."""
    scheme = scheme_for(target)
    calibration.check_method(method, percentile)
    check_dataset_matches(loaded, dataset.classes, dataset.name)
    check_calib_size(calib_size, dataset)
    if not output_checks:
        return scheme, Path(output_dir)
    output_dir = ensure_writable_dir(output_dir, needed_bytes=needed_bytes, what="--output")
    remove_stale_temporaries(output_dir)
    return scheme, output_dir


def run_ptq(
    loaded: LoadedModel,
    dataset: ImageDataset,
    output_dir: str | Path,
    *,
    target: str = "tensorrt",
    method: str = calibration.DEFAULT_METHOD,
    calib_size: int = DEFAULT_CALIB_SIZE,
    keep_float: Iterable[str] = (),
    percentile: float = calibration.DEFAULT_PERCENTILE,
    bias_correction: bool = DEFAULT_BIAS_CORRECTION,
    eval_batch_size: int = 500,
    evaluate: bool = True,
    command: str | None = None,
    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT,
) -> QuantizedModel:
    """:func:`quantize_ptq`, returning the in-memory :class:`QuantizedModel` as well."""
    scheme, output_dir = check_run(loaded, dataset, output_dir, target, method, percentile, calib_size, needed_bytes=16 << 20)
    check_residual_conv_input(residual_conv_input)
    keep = resolve_keep_float(loaded.model, keep_float)
    log.info(f"PTQ {loaded.spec.name} for {target}: {method} calibration on {calib_size} training images")
    converted, timings = ptq_convert(
        loaded.model, calibration_batches(dataset, calib_size), loaded.normalization,
        target=target, method=method, percentile=percentile, keep_float=keep, bias_correction=bias_correction,
        residual_conv_input=residual_conv_input,
    )
    settings = {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "calib_size": calib_size,
        "calib_source": "training split, data.calibration_indices(seed=2016)",
        "keep_float": keep,
        "residual_conv_input": residual_conv_input,
        "bias_correction": bias_correction,
        "qat": None,
    }
    return finish(loaded, dataset, output_dir, converted, scheme, settings, timings, eval_batch_size, evaluate, command)


def finish(
    loaded: LoadedModel,
    dataset: ImageDataset,
    output_dir: Path,
    converted: torch.fx.GraphModule,
    scheme,
    settings: dict,
    timings: dict,
    eval_batch_size: int,
    evaluate: bool,
    command: str | None,
) -> QuantizedModel:
    """Evaluate the converted model against FP32, save the artifact and return it loaded."""
    import torchao

    from .. import __version__

    metrics: dict = {"timings": timings}
    if evaluate:
        log.info(f"evaluating FP32 and int8 on {len(dataset.test_images)} test images")
        metrics.update(
            compare_with_fp32(loaded.model, converted, dataset.test_images, dataset.test_labels, loaded.normalization, eval_batch_size)
        )
        metrics["test_images"] = int(len(dataset.test_images))
    program = export_program(converted)
    qparams = extract_qparams(converted)
    manifest = {
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256},
        "model": loaded.spec.to_dict(),
        "normalization": loaded.normalization.to_dict(),
        "classes": list(loaded.classes or dataset.classes),
        "dataset": {"name": dataset.name, "source": dataset.source, "test_images": int(len(dataset.test_images))},
        "target": scheme.target,
        "scheme": scheme.describe(),
        **settings,
        "qparams_summary": summarize_qparams(qparams),
        "metrics": metrics,
        "versions": {"torch": torch.__version__, "torchao": torchao.__version__, "resnet_deploy": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    save_artifact(output_dir, program, qparams, manifest)
    if evaluate:
        log.info(
            f"top-1 FP32 {metrics['fp32']['top1']:.2f}%, int8 {metrics['int8']['top1']:.2f}% "
            f"({metrics['delta_top1']:+.2f}), agreement {metrics['agreement_top1']:.2f}%; saved {output_dir}"
        )
    from .artifact import load_quantized

    return load_quantized(output_dir)
