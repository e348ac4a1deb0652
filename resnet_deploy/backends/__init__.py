"""Backends: one Runner interface (base.py), one module per runtime.

Public API::

    Runner, SkippedRunner, BackendUnavailable, NonFiniteOutputError      (base)
    PyTorchRunner, fp32_runner, autocast_runner, int8_runner              (pytorch)
    OnnxRuntimeRunner, onnx_quantization_scheme, available_providers     (onnxruntime)
    TensorRTRunner, cuda_unavailable_reason                               (tensorrt)
    OpenVinoRunner, openvino_installed                                    (openvino)
    RunnerOptions: which backends/precisions a bench asks for, and how they run   (options)

A runner is built from plain inputs: a model or a loader (PyTorch), a file path and its settings (ONNX
Runtime, TensorRT, OpenVINO). Nothing here reads an export manifest: which file each bench row runs is
the bench stage's choice (``resnet_deploy.bench.artifacts``, ``resnet_deploy.bench.runners``).

Heavy runtimes (onnxruntime, TensorRT, OpenVINO) are imported only when a runner is activated, and
torch only when a PyTorch name is first used: the CLI reads ``BACKENDS`` from here at start-up.
"""

from __future__ import annotations

import importlib

from .base import BACKENDS, PRECISIONS, BackendUnavailable, NonFiniteOutputError, Runner, SkippedRunner, parse_device, physical_cores
from .onnxruntime import OnnxRuntimeRunner, available_providers, onnx_quantization_scheme
from .openvino import OpenVinoRunner, openvino_installed
from .options import RunnerOptions
from .tensorrt import TensorRTRunner, cuda_unavailable_reason

# Names from backends.pytorch, which imports torch: loaded on first use (PEP 562).
_PYTORCH_NAMES = ("PyTorchRunner", "autocast_runner", "fp32_runner", "int8_runner")


def __getattr__(name: str):
    if name in _PYTORCH_NAMES:
        return getattr(importlib.import_module(".pytorch", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailable",
    "NonFiniteOutputError",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "PyTorchRunner",
    "Runner",
    "RunnerOptions",
    "SkippedRunner",
    "TensorRTRunner",
    "autocast_runner",
    "available_providers",
    "cuda_unavailable_reason",
    "fp32_runner",
    "int8_runner",
    "onnx_quantization_scheme",
    "openvino_installed",
    "parse_device",
    "physical_cores",
]
