"""Program capture and the PT2E steps every quantization path shares (PTQ, QAT, sensitivity)."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import torch

from .. import progress
from ..data import ImageDataset, Normalization, calibration_indices, normalize, to_tensor_images
from ..errors import UserError
from ..quantize_choices import DEFAULT_RESIDUAL_CONV_INPUT
from . import calibration
from .quantizer import Int8Scheme, make_quantizer, quantizable_layers, resolve_layer_names, scheme_for

MAX_BATCH = 65536


def batch_dim():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def example_input(batch: int = 2) -> torch.Tensor:
    # A batch of 2: torch.export specialises dimensions of size 0 and 1, never 2, so the batch
    # dimension stays symbolic.
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def capture(model: torch.nn.Module) -> torch.fx.GraphModule:
    """torch.export the FP32 model (eval mode, dynamic batch) and return the ATen graph module.

    The graph gets its own copy of the weights: later passes (BN folding, bias correction) change
    them in place and must never reach the caller's model.
    """
    import copy

    model = copy.deepcopy(model).eval()
    program = torch.export.export(model, (example_input(),), dynamic_shapes=({0: batch_dim()},))
    return program.module()


def capture_for_training(model: torch.nn.Module) -> torch.fx.GraphModule:
    """torch.export in train mode (BatchNorm updates its statistics), for QAT; on a copy of ``model``."""
    import copy

    model = copy.deepcopy(model).train()
    program = torch.export.export(model, (example_input(),), dynamic_shapes=({0: batch_dim()},))
    return program.module()


def export_program(module: torch.nn.Module) -> torch.export.ExportedProgram:
    """The converted model as a serialisable program with a dynamic batch dimension."""
    return torch.export.export(module, (example_input(),), dynamic_shapes=({0: batch_dim()},))


def build_quantizer(scheme: Int8Scheme, method: str, percentile: float, keep_float: Iterable[str], qat: bool = False,
                    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT):
    """The quantizer of ``scheme`` with the observers of ``method`` (fake-quantizers under QAT)."""
    if qat:
        from torchao.quantization.pt2e import FakeQuantize

        activation = FakeQuantize.with_args(observer=calibration.qat_activation_observer(method, scheme, percentile))
        weight = FakeQuantize.with_args(observer=calibration.qat_weight_observer())
    else:
        activation = calibration.activation_observer(method, scheme, percentile)
        weight = calibration.weight_observer()
    return make_quantizer(scheme, activation, weight, keep_float, residual_conv_input)


def calibration_batches(dataset: ImageDataset, size: int) -> np.ndarray:
    """The deterministic calibration split (training images only; never the test split)."""
    return dataset.train_images[calibration_indices(len(dataset.train_images), size)]


def run_calibration(prepared: torch.fx.GraphModule, images: np.ndarray, normalization: Normalization, batch_size: int = 100) -> float:
    """Feed the calibration images through the observers; returns seconds taken."""
    start = time.perf_counter()
    with torch.no_grad(), progress.bar("calibrating", len(images)) as bar:
        for begin in range(0, len(images), batch_size):
            batch = images[begin : begin + batch_size]
            prepared(normalize(to_tensor_images(batch), normalization))
            bar.advance(len(batch))
    return time.perf_counter() - start


def layer_names_of(model: torch.nn.Module) -> list[str]:
    """Names of the quantizable (Conv, Linear) layers, in order."""
    return quantizable_layers(capture(model))


def resolve_keep_float(model: torch.nn.Module, keep_float: Iterable[str]) -> list[str]:
    keep_float = list(keep_float)
    if not keep_float:
        return []
    return resolve_layer_names(keep_float, layer_names_of(model))


def check_target(target: str) -> Int8Scheme:
    return scheme_for(target)


def check_calib_size(size: int, dataset: ImageDataset) -> None:
    if size <= 0:
        raise UserError(f"--calib-size must be positive, got {size}")
    if size > len(dataset.train_images):
        raise UserError(f"--calib-size {size} exceeds the {len(dataset.train_images)} training images")
