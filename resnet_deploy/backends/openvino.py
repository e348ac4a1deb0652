"""OpenVINO runner: the export stage's FP32 and Q/DQ int8 ONNX files on OpenVINO's CPU plugin.

OpenVINO reads the ONNX file itself (no conversion step, no second artifact to keep in sync): its
ONNX frontend turns each QuantizeLinear/DequantizeLinear pair into a FakeQuantize, and the CPU plugin
runs the convolutions between them as int8 kernels (VNNI on CPUs that have it). Both int8 schemes
work: the ``cpu`` (U8S8) file and the ``tensorrt`` (symmetric S8S8) one, which ONNX Runtime's CPU
kernels only half fuse. An OpenVINO IR file (``.xml`` with its ``.bin``) runs the same way; the CPU
benchmark's NNCF peer (OpenVINO's own int8 flow) is one.

Every setting that changes the figures is set explicitly and read back from the compiled model
(``CompiledModel.get_property``) into :meth:`OpenVinoRunner.describe`:

``INFERENCE_PRECISION_HINT``  f32 for ``fp32`` and ``int8`` rows, bf16 for ``bf16`` rows. Set even for
                              FP32 because the CPU plugin's default is bf16 on CPUs that have it, which
                              would make an "fp32" row a bf16 one.
``PERFORMANCE_HINT``          LATENCY (one stream, all threads on one request) or THROUGHPUT (several
                              streams; the runner splits each batch across one infer request per stream
                              and runs them at once, which is how the hint is meant to be used).
``INFERENCE_NUM_THREADS``     the thread count (default: physical cores, as for ONNX Runtime).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UserError
from .base import BackendUnavailable, Runner, physical_cores

PERFORMANCE_HINTS = ("latency", "throughput")
# The CPU plugin's inference precision for each row precision (int8 rows: what is not quantized).
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
INSTALL = "pip install openvino (or pip install 'resnet-deploy[openvino]')"


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependencyError("openvino", INSTALL, "the openvino backend") from exc
    return openvino


def openvino_installed() -> bool:
    """Whether ``import openvino`` would work, without importing it (it loads its plugins)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_version() -> str | None:
    if not openvino_installed():
        return None
    return import_openvino().get_version()


def cpu_capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (FP32, BF16, INT8, ...) on this machine."""
    ov = import_openvino()
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_unavailable_reason() -> str | None:
    """Why bf16 inference cannot run here, or None when the CPU plugin lists BF16."""
    capabilities = cpu_capabilities()
    if "BF16" in capabilities:
        return None
    return f"OpenVINO's CPU plugin lists no BF16 on this CPU (capabilities: {', '.join(capabilities)})"


class OpenVinoRunner(Runner):
    """One OpenVINO ``CompiledModel`` on the CPU over an ONNX file."""

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str = "fp32",
        name: str | None = None,
        threads: int | None = None,
        hint: str = "latency",
        scheme: str | None = None,
        sha256: str | None = None,
    ) -> None:
        if precision not in INFERENCE_PRECISION:
            raise UserError(f"the openvino backend runs {', '.join(INFERENCE_PRECISION)}, not {precision!r}")
        if hint not in PERFORMANCE_HINTS:
            raise UserError(f"--ov-hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {hint!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX file not found: {self.path}")
        from .onnxruntime import onnx_quantization_scheme

        # An OpenVINO IR (.xml, e.g. NNCF's int8 model) has FakeQuantize ops, not Q/DQ: no scheme to read.
        is_onnx = self.path.suffix == ".onnx"
        self.quantization = onnx_quantization_scheme(self.path) if precision == "int8" and is_onnx else None
        self.scheme = scheme
        super().__init__(name or _default_name(precision, self.quantization, hint), precision, "cpu", input_name="input")
        self.threads = threads or physical_cores()
        self.hint = hint
        self.sha256 = sha256
        self._compiled = None
        self._requests: list = []
        self._settings: dict = {}

    # ------------------------------------------------------------------ lifecycle

    def _activate(self) -> None:
        ov = import_openvino()
        core = ov.Core()
        if self.precision == "bf16":
            reason = bf16_unavailable_reason()
            if reason:
                raise BackendUnavailable(reason)
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError / GeneralFailure for unreadable files
            raise UserError(f"openvino cannot read {self.path}: {str(exc).strip().splitlines()[0]}") from exc
        if len(model.inputs) != 1 or len(model.outputs) < 1:
            raise UserError(f"{self.path}: expected one input and one output, found {len(model.inputs)} and {len(model.outputs)}")
        self.input_name = model.inputs[0].get_any_name()
        batch = model.inputs[0].get_partial_shape()[0]
        self.max_batch_size = batch.get_length() if batch.is_static else None
        compiled = core.compile_model(model, "CPU", self.compile_config())
        self._compiled = compiled
        self._requests = [compiled.create_infer_request() for _ in range(self._request_count(compiled))]
        self._settings = self._read_back(ov, compiled)

    def _deactivate(self) -> None:
        self._requests = []
        self._compiled = None

    def compile_config(self) -> dict[str, Any]:
        """The properties given to ``Core.compile_model``."""
        return {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": self.hint.upper(),
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision],
        }

    def _request_count(self, compiled) -> int:
        # LATENCY: one request holds every thread. THROUGHPUT: one request per stream, run together.
        if self.hint == "latency":
            return 1
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def _read_back(self, ov, compiled) -> dict:
        """What the compiled model actually uses, and how many convolutions run as int8."""
        settings = {
            "openvino": ov.get_version(),
            "device": "CPU",
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")).split(".")[-1],
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "infer_requests": len(self._requests),
            "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
        }
        settings.update(runtime_convolutions(compiled))
        return settings

    # ------------------------------------------------------------------ inference

    def _prepare(self, batch: Any) -> Any:
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        return np.ascontiguousarray(batch, dtype=np.float32)

    def run_prepared(self, staged: np.ndarray) -> np.ndarray:
        if len(self._requests) == 1 or len(staged) < 2:
            # share_inputs: OpenVINO reads the numpy buffer in place; the output is copied out.
            return self._requests[0].infer({0: staged}, share_inputs=True)[0]
        return self._run_split(staged)

    def _run_split(self, staged: np.ndarray) -> np.ndarray:
        """THROUGHPUT: one slice of the batch per infer request, all in flight at once."""
        chunks = np.array_split(staged, min(len(self._requests), len(staged)))
        requests = self._requests[: len(chunks)]
        for request, chunk in zip(requests, chunks):
            request.start_async({0: chunk}, share_inputs=True)
        for request in requests:
            request.wait()
        return np.concatenate([request.get_output_tensor(0).data for request in requests])

    def describe(self) -> dict:
        info = {
            "execution": self._execution_summary(),
            "onnx": str(self.path),
            "sha256": self.sha256,
            "compile_config": {key: str(value) for key, value in self.compile_config().items()},
            **self._settings,
        }
        if self.scheme:
            info["export_scheme"] = self.scheme
        if self.quantization:
            info["quantization"] = self.quantization
        return info

    def _execution_summary(self) -> str:
        settings = self._settings
        if not settings:
            return f"OpenVINO CPU, {self.hint.upper()} hint, {INFERENCE_PRECISION[self.precision]}, {self.threads} threads (requested)"
        return (
            f"OpenVINO {settings['openvino'].split('-')[0]} CPU, {settings['performance_hint']} hint, "
            f"{settings['inference_precision']} inference precision, {settings['inference_num_threads']} threads, "
            f"{settings['num_streams']} stream(s)"
        )


def runtime_convolutions(compiled) -> dict:
    """Convolutions of the compiled model by the precision the CPU plugin runs them in: the OpenVINO
    counterpart of ONNX Runtime's fused-kernel counts, so "int8 on OpenVINO" is read, not assumed."""
    precisions: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) == "Convolution":
            precisions[str(info["runtimePrecision"].astype(str))] += 1
    return {
        "convolutions": sum(precisions.values()),
        "int8_convolutions": precisions.get("u8", 0) + precisions.get("i8", 0),
        "convolution_precisions": dict(sorted(precisions.items())),
    }


def _type_name(value) -> str:
    """``<Type: 'float32'>`` -> ``f32``: OpenVINO element types by their short names."""
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


def _default_name(precision: str, quantization: dict | None, hint: str) -> str:
    name = f"openvino-{precision}"
    if quantization:
        name += f"-{quantization['label'].lower()}"
    if hint != "latency":
        name += f"-{hint}"
    return name
