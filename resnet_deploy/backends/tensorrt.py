"""TensorRT runner: serialized engines from ``resnet-deploy export`` (full TensorRT or TensorRT-RTX).

I/O goes through torch CUDA tensors: the input tensor's and a preallocated output's device pointers are
bound with ``IExecutionContext.set_tensor_address`` and ``execute_async_v3`` enqueues on the runner's own
``torch.cuda.Stream``. With ``cuda_graph=True`` the enqueue is captured once per batch size into a CUDA
graph (``torch.cuda.graph``) and replayed, which removes the per-launch CPU overhead that dominates small
batches; the input is copied into the graph's static buffer first.

An engine is only valid for the GPU architecture and TensorRT version it was built with; the sidecar
checks of ``resnet_deploy.tensorrt`` (``check_engine``) refuse a mismatch with a message before
deserialization. Batches outside the engine's optimization profile are refused with the profile's range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UserError
from ..tensorrt import check_engine, deserialize_engine, runtime
from .base import BackendUnavailable, Runner


def import_tensorrt():
    """(module, flavour, version) of full TensorRT or TensorRT-RTX; BackendUnavailable if neither."""
    try:
        return runtime.import_tensorrt()
    except MissingDependencyError as exc:
        raise BackendUnavailable(str(exc)) from exc


def tensorrt_version() -> dict | None:
    """{"flavour", "version"} of the importable TensorRT, or None."""
    try:
        _, flavour, version = import_tensorrt()
    except UserError:
        return None
    return {"flavour": flavour, "version": str(version)}


def cuda_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here, or None when a CUDA GPU is visible."""
    import torch

    if not torch.cuda.is_available():
        build = f"torch {torch.__version__} (CUDA {torch.version.cuda})" if torch.version.cuda else f"torch {torch.__version__} (CPU-only build)"
        return f"TensorRT engines run on a CUDA GPU and none is visible here ({build}, torch.cuda.is_available() is False)"
    return None


class TensorRTRunner(Runner):
    """One deserialized engine, one execution context, I/O in torch CUDA tensors."""

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        *,
        precision: str,
        name: str | None = None,
        onnx_path: str | Path | None = None,
        device_id: int = 0,
        cuda_graph: bool = False,
        sha256: str | None = None,
    ) -> None:
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise UserError(f"TensorRT engine not found: {self.engine_path}", hint="build one with `resnet-deploy export ... --tensorrt`")
        super().__init__(name or f"tensorrt-{precision}" + ("-cudagraph" if cuda_graph else ""), precision, f"cuda:{device_id}")
        self.onnx_path = Path(onnx_path) if onnx_path else None
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self.sha256 = sha256
        self.min_batch_size: int | None = None
        self.sidecar: dict | None = None
        self.flavour: str | None = None
        self.trt_version: str | None = None
        self._engine = self._context = self._stream = None
        self._bound_shape: tuple | None = None
        self._output = None
        self._graphs: dict[tuple, Any] = {}
        self._graph_inputs: dict[tuple, Any] = {}
        self._graph_note: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def _activate(self) -> None:
        import torch

        trt, self.flavour, version = import_tensorrt()
        self.trt_version = str(version)
        # The engine's own checks first (sidecar hash, TensorRT version, GPU architecture, source ONNX):
        # a broken or stale engine is an error even on a machine that could not run a good one.
        self.sidecar = check_engine(self.engine_path, self.onnx_path)
        reason = cuda_unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        torch.cuda.set_device(self.device_id)
        engine = deserialize_engine(self.engine_path)
        self._bind_io(trt, engine)
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise UserError(f"TensorRT could not create an execution context for {self.engine_path} (GPU memory?)")
        self._stream = torch.cuda.Stream(device=self.device_id)
        self._device_memory_mb = _engine_device_memory(engine) / 2**20

    def _bind_io(self, trt, engine) -> None:
        """The engine's one input and one output: names, profile batch range, torch dtypes."""
        import torch

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self.engine_path}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        min_shape, _opt, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch_size, self.max_batch_size = int(min_shape[0]), int(max_shape[0])
        torch_dtypes = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT8: torch.int8,
        }
        self._input_dtype = torch_dtypes[engine.get_tensor_dtype(self.input_name)]
        self._output_dtype = torch_dtypes[engine.get_tensor_dtype(self.output_name)]

    def _deactivate(self) -> None:
        import torch

        self._graphs.clear()
        self._graph_inputs.clear()
        self._context = self._engine = self._output = None
        self._bound_shape = None
        if self._stream is not None:
            self._stream.synchronize()
        self._stream = None
        torch.cuda.empty_cache()

    # ------------------------------------------------------------------ inference

    def _check_batch(self, batch: Any) -> Any:
        batch = super()._check_batch(batch)
        if self.min_batch_size is not None and batch.shape[0] < self.min_batch_size:
            raise UserError(f"{self.name}: batch {batch.shape[0]} is below the engine profile's min batch {self.min_batch_size}")
        return batch

    def _prepare(self, batch: Any):
        import torch

        with torch.cuda.stream(self._stream):
            tensor = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
            return tensor.to(f"cuda:{self.device_id}", dtype=self._input_dtype, non_blocking=True).contiguous()

    def _bind(self, shape: tuple) -> None:
        """Set the input shape and (re)allocate the output when the batch size changes."""
        import torch

        if shape == self._bound_shape:
            return
        if not self._context.set_input_shape(self.input_name, shape):
            raise UserError(f"{self.name}: TensorRT refused input shape {shape} (profile batch {self.min_batch_size}..{self.max_batch_size})")
        output_shape = tuple(self._context.get_tensor_shape(self.output_name))
        self._output = torch.empty(output_shape, dtype=self._output_dtype, device=f"cuda:{self.device_id}")
        self._context.set_tensor_address(self.output_name, self._output.data_ptr())
        self._bound_shape = shape
        self._graphs.pop(shape, None)

    def run_prepared(self, staged):
        import torch

        shape = tuple(staged.shape)
        self._bind(shape)
        if self.cuda_graph:
            graph = self._graphs.get(shape) or self._capture(shape)
            if graph is not None:
                with torch.cuda.stream(self._stream):
                    self._graph_inputs[shape].copy_(staged, non_blocking=True)
                    graph.replay()
                return self._output
        self._context.set_tensor_address(self.input_name, staged.data_ptr())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed (see the TensorRT log)")
        return self._output

    def _capture(self, shape: tuple):
        """Capture the enqueue for ``shape`` in a CUDA graph; on failure run without one and say why."""
        import torch

        static_input = torch.zeros(shape, dtype=self._input_dtype, device=f"cuda:{self.device_id}")
        self._context.set_tensor_address(self.input_name, static_input.data_ptr())
        # TensorRT needs one ordinary enqueue after a shape change before its launches can be captured.
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed before CUDA graph capture")
        self._stream.synchronize()
        if hasattr(self._context, "is_stream_capturable") and not self._context.is_stream_capturable(self._stream.cuda_stream):
            self._graph_note = "not stream-capturable: ran without CUDA graphs"
            self.cuda_graph = False
            return None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self._context.execute_async_v3(self._stream.cuda_stream)
        except RuntimeError as exc:
            self._graph_note = f"capture failed ({exc}); ran without CUDA graphs"
            self.cuda_graph = False
            return None
        self._graphs[shape] = graph
        self._graph_inputs[shape] = static_input
        return graph

    def to_host(self, output) -> np.ndarray:
        # The output buffer is reused by the next call: copy it out on the runner's stream.
        with __import__("torch").cuda.stream(self._stream):
            host = output.float().cpu()
        return host.numpy().astype(np.float32, copy=False)

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

    @property
    def cuda_stream(self):
        return self._stream

    def describe(self) -> dict:
        info = {
            "engine": str(self.engine_path),
            "sha256": self.sha256,
            "onnx": str(self.onnx_path) if self.onnx_path else None,
            "tensorrt": {"flavour": self.flavour, "version": self.trt_version},
            "profile_batch": [self.min_batch_size, self.max_batch_size] if self.max_batch_size else None,
            "cuda_graph": self.cuda_graph,
            "io": "torch CUDA tensors, execute_async_v3 on a torch CUDA stream",
        }
        if self._graph_note:
            info["cuda_graph_note"] = self._graph_note
        if self.is_active:
            info["engine_device_memory_mb"] = round(self._device_memory_mb, 1)
        return info


def _engine_device_memory(engine) -> int:
    for attribute in ("device_memory_size_v2", "device_memory_size"):
        if hasattr(engine, attribute):
            try:
                return int(getattr(engine, attribute))
            except (TypeError, ValueError):
                continue
    return 0
