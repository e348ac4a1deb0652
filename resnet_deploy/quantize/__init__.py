"""int8 quantization of CIFAR ResNets with torchao's PT2E flow (the maintained path).

Public API (other stages use only these names):

``quantize_ptq(loaded, dataset, output_dir, *, target, method, calib_size, keep_float, ...) -> dict``
    post-training quantization; writes the artifact (see :mod:`.artifact`) and returns its metrics.
``quantize_qat(loaded, dataset, output_dir, *, target, epochs, lr, ...) -> dict``
    quantization-aware fine-tuning from the FP32 checkpoint; resumable; same artifact.
``load_quantized(artifact_dir, checkpoint=None) -> QuantizedModel``
    load an artifact, checking file hashes (and the FP32 checkpoint's, when given).
``QuantizedModel``: ``.module`` (Q/DQ reference model, ONNX-exportable), ``.target``, ``.spec``,
    ``.normalization``, ``.classes``, ``.checkpoint_sha256``, ``.artifact_dir``, ``.metrics``,
    ``.residual_conv_input``, ``.int8_cpu_callable()``.
``sensitivity_analysis(...)``: per-layer accuracy loss ranking and a mixed-precision plan.

Targets: ``tensorrt`` (signed int8, symmetric, zero-point 0 everywhere) and ``cpu`` (U8S8: unsigned
asymmetric activations, signed symmetric per-channel weights). Calibration methods: minmax, ema,
percentile, entropy, mse (see :mod:`.calibration`). Residual Add conv inputs (``residual_conv_input``): int8
(default) or float (see :func:`.quantizer.annotate_graph`).
"""

from .artifact import QuantizedModel, load_quantized
from .calibration import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS
from .ptq import DEFAULT_CALIB_SIZE, quantize_ptq, run_ptq
from .qat import quantize_qat
from .quantizer import TARGETS, scheme_for
from ..quantize_choices import DEFAULT_RESIDUAL_CONV_INPUT, RESIDUAL_CONV_INPUTS
from .sensitivity import sensitivity_analysis

__all__ = [
    "DEFAULT_CALIB_SIZE",
    "DEFAULT_METHOD",
    "DEFAULT_PERCENTILE",
    "DEFAULT_RESIDUAL_CONV_INPUT",
    "METHODS",
    "RESIDUAL_CONV_INPUTS",
    "TARGETS",
    "QuantizedModel",
    "load_quantized",
    "quantize_ptq",
    "quantize_qat",
    "run_ptq",
    "scheme_for",
    "sensitivity_analysis",
]
