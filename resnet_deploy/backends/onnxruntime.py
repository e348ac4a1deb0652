"""ONNX Runtime runner: CPU execution provider by default, CUDA / TensorRT providers when installed.

Runs FP32, FP16 and int8 (Q/DQ) ONNX files. The thread count (intra-op, default: physical cores) and
graph optimization level are recorded with every result because they change the figures.

int8 on the CPU: ONNX Runtime's x86 kernels are fast with unsigned 8-bit activations and signed weights
(U8S8, the ``cpu`` scheme of ``resnet-deploy export``); symmetric signed activations (S8S8, TensorRT's
scheme) fall off the fast path. :func:`onnx_quantization_scheme` reads which one a file uses from the
graph itself, so a results row says what it measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..optional import import_onnxruntime
from .base import BackendUnavailable, Runner, physical_cores

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def available_providers() -> list[str]:
    """Short names (cpu, cuda, tensorrt) of the execution providers this onnxruntime build has."""
    ort = import_onnxruntime("the onnxruntime backend")
    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


class OnnxRuntimeRunner(Runner):
    """One ``onnxruntime.InferenceSession`` over an ONNX file."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        precision: str = "fp32",
        name: str | None = None,
        provider: str = "cpu",
        device_id: int = 0,
        threads: int | None = None,
        graph_optimization: str = "all",
        scheme: str | None = None,
        sha256: str | None = None,
    ) -> None:
        if provider not in PROVIDERS:
            raise UserError(f"--ort-provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
        if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise UserError(f"graph optimization must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, got {graph_optimization!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX file not found: {self.path}")
        self.provider = provider
        self.device_id = device_id
        device = "cpu" if provider == "cpu" else f"cuda:{device_id}"
        self.quantization = onnx_quantization_scheme(self.path) if precision == "int8" else None
        self.scheme = scheme
        if name is None:
            name = f"onnxruntime-{precision}"
            if self.quantization:
                name += f"-{self.quantization['label'].lower()}"
            if provider != "cpu":
                name += f"-{provider}"
        super().__init__(name, precision, device, input_name="input")
        self.threads = threads or physical_cores()
        self.graph_optimization = graph_optimization
        self.sha256 = sha256
        self._session = None
        self._input_dtype = np.float32
        self.output_name = "logits"

    # ------------------------------------------------------------------ lifecycle

    def _activate(self) -> None:
        ort = import_onnxruntime("the onnxruntime backend")
        wanted = PROVIDERS[self.provider]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} here has no {wanted} (it has {', '.join(ort.get_available_providers())})",
                hint="install onnxruntime-gpu for the CUDA and TensorRT execution providers" if self.provider != "cpu" else None,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        providers: list = []
        if self.provider == "tensorrt":
            providers.append(
                (
                    wanted,
                    {
                        "device_id": self.device_id,
                        "trt_fp16_enable": self.precision == "fp16",
                        "trt_int8_enable": self.precision == "int8",
                    },
                )
            )
        if self.provider in ("cuda", "tensorrt"):
            providers.append(("CUDAExecutionProvider", {"device_id": self.device_id}))
        providers.append("CPUExecutionProvider")
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...) for bad files
            raise UserError(f"onnxruntime cannot load {self.path}: {str(exc).strip().splitlines()[0]}") from exc
        if session.get_providers()[0] != wanted:
            # ORT falls back to the CPU silently when a GPU provider's libraries fail to load.
            raise BackendUnavailable(
                f"onnxruntime fell back to {session.get_providers()[0]}: {wanted} could not be initialised (CUDA/cuDNN libraries or GPU missing)"
            )
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise UserError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self._input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        batch_dim = inputs[0].shape[0] if inputs[0].shape else None
        if isinstance(batch_dim, int):  # a static batch: that size only
            self.max_batch_size = batch_dim
            self._static_batch = batch_dim
        else:
            self._static_batch = None
        self._session = session
        self._ort = ort

    def _deactivate(self) -> None:
        self._session = None

    # ------------------------------------------------------------------ inference

    def _check_batch(self, batch: Any) -> Any:
        batch = super()._check_batch(batch)
        if self._static_batch is not None and batch.shape[0] != self._static_batch:
            raise UserError(f"{self.name}: {self.path} has a static batch of {self._static_batch}; export it with a dynamic batch")
        return batch

    def _prepare(self, batch: Any) -> Any:
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        array = np.ascontiguousarray(batch, dtype=self._input_dtype)
        if self.provider == "cpu":
            return array
        return self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)

    def run_prepared(self, staged: Any) -> Any:
        if self.provider == "cpu":
            return self._session.run([self.output_name], {self.input_name: staged})[0]
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self.input_name, staged)
        binding.bind_output(self.output_name, "cuda", self.device_id)
        self._session.run_with_iobinding(binding)  # synchronises the provider's stream before returning
        return binding.get_outputs()[0]

    def to_host(self, output: Any) -> np.ndarray:
        if hasattr(output, "numpy") and not isinstance(output, np.ndarray):
            output = output.numpy()
        return np.asarray(output, dtype=np.float32)

    def peak_memory_kind(self) -> str:
        return "process_rss"  # ORT's CUDA arena is not visible to torch's allocator statistics

    def describe(self) -> dict:
        info = {
            "onnx": str(self.path),
            "sha256": self.sha256,
            "execution_provider": PROVIDERS[self.provider],
            "intra_op_threads": self.threads,
            "inter_op_threads": 1,
            "graph_optimization": self.graph_optimization,
        }
        if self.scheme:
            info["export_scheme"] = self.scheme
        if self.quantization:
            info["quantization"] = self.quantization
        return info


def onnx_quantization_scheme(path: str | Path) -> dict | None:
    """Which int8 scheme an ONNX file uses, read from its graph: activation and weight integer types.

    Returns ``{"activations": "uint8"|"int8", "weights": "int8"|"uint8", "label": "U8S8"|"S8S8"|...,
    "format": "QDQ"|"QOperator", "activation_zero_points": "zero"|"nonzero"}`` or None without int8 nodes.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    found = _IntegerTypes()
    constants = _GraphConstants(graph)
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3:
            found.formats.add("QDQ")
            if not constants.holds(node.input[0]):  # a weight quantized in the graph shows on the DQ side
                found.add_activation_zero_point(constants.array(node.input[2]))
        elif node.op_type == "DequantizeLinear":
            found.formats.add("QDQ")
            source = constants.array(node.input[0])
            if source is not None and source.ndim >= 2:  # a conv / gemm weight (biases are 1-D)
                found.weights.add(str(source.dtype))
        elif node.op_type in ("QLinearConv", "QLinearMatMul"):
            found.formats.add("QOperator")
            found.add_activation_zero_point(constants.array(node.input[2]))
            weight = constants.array(node.input[3])
            if weight is not None:
                found.weights.add(str(weight.dtype))
    return found.describe()


class _GraphConstants:
    """The tensors an ONNX graph holds as data: its initializers and its Constant nodes' values."""

    def __init__(self, graph) -> None:
        self.initializers = {init.name: init for init in graph.initializer}
        self.constants = {}
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = attribute.t

    def holds(self, name: str) -> bool:
        return name in self.initializers or name in self.constants

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        found = self.initializers.get(name) or self.constants.get(name)
        return numpy_helper.to_array(found) if found is not None else None


class _IntegerTypes:
    """What the int8 nodes of a graph use: activation and weight integer types, Q/DQ or QOperator."""

    def __init__(self) -> None:
        self.activations: set[str] = set()
        self.weights: set[str] = set()
        self.formats: set[str] = set()
        self.nonzero_zero_point = False

    def add_activation_zero_point(self, zero_point: np.ndarray | None) -> None:
        if zero_point is not None:
            self.activations.add(str(zero_point.dtype))
            self.nonzero_zero_point |= bool(np.any(zero_point != 0))

    def describe(self) -> dict | None:
        if not self.activations and not self.weights:
            return None
        return {
            "activations": ",".join(sorted(self.activations)) or None,
            "weights": ",".join(sorted(self.weights)) or None,
            "label": _type_letter(self.activations) + _type_letter(self.weights),
            "format": ",".join(sorted(self.formats)),
            "activation_zero_points": "nonzero" if self.nonzero_zero_point else "zero",
        }


def _type_letter(types: set[str]) -> str:
    if types == {"uint8"}:
        return "U8"
    if types == {"int8"}:
        return "S8"
    return "mixed" if types else "?"
