"""PyTorch runners: FP32 eager (the baseline every ratio is against), FP16/BF16 autocast, torch.compile,
and int8 from a ``quantize`` artifact (its fast CPU x86 lowering).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UserError
from .base import BackendUnavailable, Runner, physical_cores

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class PyTorchRunner(Runner):
    """Runs a ``torch.nn.Module`` (or any tensor -> tensor callable) in inference mode.

    ``model`` may be given directly or through ``loader`` (called in ``activate``) so that heavy loading
    happens only when the runner is used. ``precision`` fp16/bf16 runs the FP32 weights under autocast;
    int8 means the callable is already quantized (see :func:`int8_runner`).

    An FP32 runner on a GPU pins TF32 off (cuDNN convolutions and cuBLAS matmuls) while it is active and
    puts the flags back on deactivation: torch leaves cuDNN TF32 on by default, which would make the
    "FP32" baseline a TF32 one. A subclass that means TF32 (a ``pytorch-tf32`` row) sets ``tf32 = True``.
    """

    backend = "pytorch"
    tf32 = False  # the TF32 flags an FP32 GPU runner pins while active

    def __init__(
        self,
        model: torch.nn.Module | Callable | None = None,
        *,
        loader: Callable[[], Callable] | None = None,
        name: str | None = None,
        precision: str = "fp32",
        device: str = "cpu",
        compile: bool = False,
        channels_last: bool = False,
        threads: int | None = None,
        artifact: dict | None = None,
    ) -> None:
        if (model is None) == (loader is None):
            raise ValueError("give exactly one of model or loader")
        device = str(torch.device(device))
        suffix = "-compile" if compile else ""
        super().__init__(name or f"pytorch-{precision}{suffix}", precision, device, input_name="input")
        self._model_arg = model
        self._loader = loader
        self.compile = compile
        self.channels_last = channels_last
        self.threads = threads or physical_cores()
        self.artifact = artifact
        self._model: Callable | None = None
        self._saved_threads: int | None = None
        self._saved_tf32: tuple[bool, bool] | None = None
        if device.startswith("cuda") and precision == "int8":
            raise UserError("PyTorch int8 runs on the CPU (x86 lowering); use TensorRT for int8 on a GPU")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendUnavailable("PyTorch fp16 autocast needs a CUDA device (CPU kernels for fp16 convolutions are slow or missing)")

    def _activate(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"PyTorch on {self.device} needs a CUDA GPU; torch.cuda.is_available() is False here")
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        if self.precision == "fp32" and self.device.startswith("cuda"):
            self._saved_tf32 = _set_tf32(self.tf32)
        try:
            self._model = self._load_model()
        except BaseException:
            self._restore_global_settings()  # a failed activation is never deactivated: undo it here
            raise

    def _load_model(self) -> Callable:
        model = self._model_arg if self._model_arg is not None else self._loader()
        if isinstance(model, torch.nn.Module):
            model = model.eval().to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
        if self.compile:
            # Static shapes: one graph per batch size, compiled during warm-up; "dynamic" would cost speed.
            model = torch.compile(model, dynamic=False)
        return model

    def _deactivate(self) -> None:
        self._model = None
        self._restore_global_settings()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _restore_global_settings(self) -> None:
        """Put back torch's thread count and TF32 flags as activation found them."""
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_tf32 is not None:
            _restore_tf32(self._saved_tf32)
            self._saved_tf32 = None

    def _prepare(self, batch: Any) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        tensor = tensor.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def run_prepared(self, staged: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._autocast():
            return self._model(staged)

    def _autocast(self):
        if self.precision in _AUTOCAST_DTYPES:
            return torch.autocast(device_type=torch.device(self.device).type, dtype=_AUTOCAST_DTYPES[self.precision])
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    @property
    def cuda_stream(self):
        return torch.cuda.current_stream(self.device) if self.device.startswith("cuda") else None

    def describe(self) -> dict:
        info = {
            "execution": (
                "int8 x86 CPU lowering (quantize stage)" if self.precision == "int8"
                else "torch.compile (inductor)" if self.compile else "eager"
            ),
            "autocast": self.precision if self.precision in _AUTOCAST_DTYPES else None,
            "channels_last": self.channels_last,
            "torch_threads": self.threads if not self.device.startswith("cuda") else None,
        }
        if self.artifact:
            info["artifact"] = self.artifact
        return info


def _set_tf32(enabled: bool) -> tuple[bool, bool]:
    """Set TF32 for cuDNN convolutions and cuBLAS matmuls; returns the previous (cudnn, matmul) flags.

    The legacy ``allow_tf32`` flags, as benchmarks/gpu_suite.py uses: torch's newer per-op
    ``fp32_precision`` settings, mixed with readers of the old flags, raise on torch 2.14."""
    previous = (bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32))
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return previous


def _restore_tf32(previous: tuple[bool, bool]) -> None:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def fp32_runner(model: torch.nn.Module, device: str = "cpu", **options) -> PyTorchRunner:
    """The FP32 eager baseline row (``pytorch-fp32``)."""
    return PyTorchRunner(model, precision="fp32", device=device, **options)


def autocast_runner(model: torch.nn.Module, precision: str, device: str = "cuda", **options) -> PyTorchRunner:
    """FP16 or BF16 autocast over the FP32 weights."""
    if precision not in _AUTOCAST_DTYPES:
        raise UserError(f"autocast precision must be fp16 or bf16, got {precision!r}")
    return PyTorchRunner(model, precision=precision, device=device, **options)


def int8_runner(artifact_dir: str | Path, checkpoint: str | Path | None = None, threads: int | None = None) -> PyTorchRunner:
    """int8 from a ``resnet-deploy quantize`` artifact, lowered for x86 CPUs by the quantize stage.

    ``load_quantized`` checks the artifact's file hashes (and, with ``checkpoint``, that it was made from
    that FP32 checkpoint) when the runner is activated.
    """
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise UserError(f"quantized artifact directory not found: {artifact_dir}", hint="create it with `resnet-deploy quantize`")
    artifact: dict = {"path": str(artifact_dir)}

    def load() -> Callable:
        from ..quantize import load_quantized

        quantized = load_quantized(artifact_dir, checkpoint)
        artifact.update(target=quantized.target, method=quantized.method, residual_conv_input=quantized.residual_conv_input,
                        checkpoint_sha256=quantized.checkpoint_sha256)
        return quantized.int8_cpu_callable()

    return PyTorchRunner(loader=load, name="pytorch-int8-x86", precision="int8", device="cpu", threads=threads, artifact=artifact)
