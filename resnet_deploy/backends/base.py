"""The Runner interface every backend implements (modelled on polygraphy's runners).

A runner wraps one way of executing one model: PyTorch eager FP32 on the CPU, ONNX Runtime on an int8
ONNX file, a TensorRT engine, ... The benchmark treats them all alike::

    for runner in runners:
        with runner:                      # activate(): load the model, allocate buffers
            logits = runner.infer(batch)  # normalized float32 NCHW in -> float32 logits (host numpy) out
                                          # deactivate() on exit frees everything

Attributes every runner has:

``name``        unique row name in results, e.g. ``onnxruntime-int8-u8s8``
``backend``     ``pytorch`` | ``onnxruntime`` | ``tensorrt`` | ``openvino``
``precision``   ``fp32`` | ``fp16`` | ``bf16`` | ``int8``
``device``      ``cpu`` | ``cuda:N``
``input_name``  the model input's name (``input`` for ONNX/TensorRT artifacts of resnet-deploy)
``max_batch_size``  the largest batch the runner accepts (a TensorRT profile's max), or None

Timing support: ``prepare(batch)`` stages an input where the runner wants it (a CUDA tensor for GPU
runners) and ``run_prepared(staged)`` executes without any host<->device copy, returning the output on
the device; ``synchronize()`` waits for queued device work; ``cuda_stream`` is the torch CUDA stream the
runner enqueues on (None on the CPU), so the benchmark can time it with CUDA events.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

# The one list of backend names: bench --backend, RunnerOptions and the results schema read it.
BACKENDS = ("pytorch", "onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def parse_device(text: str, option: str = "--device") -> tuple[str, int]:
    """A benchmark device as written on the command line: ``cpu`` -> ("cpu", 0), ``cuda`` -> ("cuda:0", 0),
    ``cuda:N`` -> ("cuda:N", N). Anything else (``cuda:``, ``cuda:-1``, ``cuda:x``, ``CUDA``, `` cpu``,
    ``cpu:0``, ``meta``) is refused naming the option, never an int() traceback. Whether GPU N exists is
    the runner's question (it reports the row as skipped, with the reason)."""
    if text == "cpu":
        return "cpu", 0
    if text == "cuda":
        return "cuda:0", 0
    kind, colon, index = text.partition(":") if isinstance(text, str) else ("", "", "")
    if kind == "cuda" and colon and index.isascii() and index.isdigit() and len(index) <= 4:
        return f"cuda:{int(index)}", int(index)
    raise UserError(f"{option} must be cpu, cuda or cuda:N with N a GPU number (0, 1, ...), got {text!r}")


class BackendUnavailable(UserError):
    """A backend cannot run on this machine (no GPU, package missing, engine built for another GPU).

    The benchmark reports the runner as skipped with ``str(error)`` as the reason instead of failing.
    """


class NonFiniteOutputError(UserError):
    """A backend produced NaN or inf logits; the benchmark names the backend and batch."""


@dataclass
class SkippedRunner:
    """A row that cannot run here, kept so the report lists it with its reason."""

    name: str
    backend: str
    precision: str
    device: str
    reason: str


class Runner(abc.ABC):
    """Base class: activation bookkeeping, the context manager and input checks."""

    backend: str = ""

    def __init__(self, name: str, precision: str, device: str = "cpu", input_name: str = "input") -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.name = name
        self.precision = precision
        self.device = device
        self.input_name = input_name
        self.max_batch_size: int | None = None
        self.is_active = False

    # ------------------------------------------------------------------ lifecycle

    def activate(self) -> "Runner":
        """Load the model and allocate what inference needs. Idempotent."""
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Free the model and its buffers. Idempotent."""
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    # ------------------------------------------------------------------ inference

    def infer(self, batch: Any) -> np.ndarray:
        """Float32 logits (N, classes) on the host for a normalized float32 NCHW batch (numpy or torch).

        Host<->device copies are part of this call.
        """
        self._check_active()
        staged = self.prepare(batch)
        output = self.run_prepared(staged)
        return self.to_host(output)

    def prepare(self, batch: Any) -> Any:
        """Stage ``batch`` for ``run_prepared`` (checks shape; GPU runners copy it to the device)."""
        self._check_active()
        return self._prepare(self._check_batch(batch))

    @abc.abstractmethod
    def _prepare(self, batch: Any) -> Any: ...

    @abc.abstractmethod
    def run_prepared(self, staged: Any) -> Any:
        """Run on a staged input; the output stays where the backend produced it."""

    def to_host(self, output: Any) -> np.ndarray:
        """A backend output as float32 numpy on the host."""
        if hasattr(output, "detach"):
            output = output.detach().float().cpu().numpy()
        return np.asarray(output, dtype=np.float32)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to do on the CPU)."""

    @property
    def cuda_stream(self):
        """The torch.cuda.Stream this runner enqueues on, or None for CPU runners."""
        return None

    def describe(self) -> dict:
        """Settings that explain the row's figures (threads, providers, artifact, ...)."""
        return {}

    def peak_memory_kind(self) -> str:
        return "cuda_allocated" if self.device.startswith("cuda") else "process_rss"

    # ------------------------------------------------------------------ helpers

    def _check_active(self) -> None:
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active: use `with runner:` or runner.activate()")

    def _check_batch(self, batch: Any) -> Any:
        shape = tuple(batch.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise UserError(f"{self.name}: expected a normalized float NCHW batch (N, 3, H, W), got shape {shape}")
        if self.max_batch_size is not None and shape[0] > self.max_batch_size:
            raise UserError(
                f"{self.name}: batch {shape[0]} is larger than the engine's optimization profile allows "
                f"(max batch {self.max_batch_size})",
                hint="rebuild the engine with a larger --max-batch or bench smaller --batch-sizes",
            )
        return batch

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, device={self.device!r})"


def physical_cores() -> int:
    """Physical cores this process may use (SMT siblings counted once): ONNX Runtime's and our default
    thread count, since a second hyper-thread per core rarely helps convolution kernels."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    return max(1, len(cores))


def check_finite(logits: np.ndarray, runner_name: str, where: str) -> None:
    """Raise NonFiniteOutputError naming the runner and batch when logits hold NaN or inf."""
    finite = np.isfinite(logits)
    if not finite.all():
        bad = int((~finite).sum())
        kinds = []
        if np.isnan(logits).any():
            kinds.append("NaN")
        if np.isinf(logits).any():
            kinds.append("inf")
        raise NonFiniteOutputError(
            f"{runner_name} produced {' and '.join(kinds)} in {bad} of {logits.size} logits ({where})"
        )
