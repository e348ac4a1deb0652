"""TensorRT's per-layer outputs, from an engine with the same fusions as the deployed one (GPU only).

Marking tensors as network outputs (what "mark all" debugging does) stops TensorRT fusing across them,
so the per-layer figures would describe another engine. Instead the engine is built from the same ONNX
with ``INetworkDefinition.mark_unfused_tensors_as_debug_tensors()``: TensorRT's API documents that
tensors marked this way "will not prevent fusion like mark_debug() does" and that the names the debug
listener reports "correspond to the names obtained by IEngineInspector". At run time
``IExecutionContext.unfused_tensors_debug_state = True`` makes TensorRT call an ``IDebugListener``
with each such tensor, which is copied to the host.

A layer is read where its observed ONNX node (its QuantizeLinear, or the op itself) ends an engine
layer: the engine inspector lists every engine layer's ONNX nodes (``Metadata``) and output tensors.
A layer TensorRT fused into a larger one (a convolution with its residual Add) has no tensor of its
own: it is recorded with the engine layer that absorbed it, and compared at that layer's output.

Needs a CUDA GPU (engines are deserialised to run); elsewhere ``unavailable_reason`` says why not.
This path has not been run in this repository's CI, which has no GPU.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..onnx_file import INPUT_NAME, OUTPUT_NAME
from ..tensorrt import BatchRange, loader, runtime
from .graph import OnnxGraph
from .layers import Layer
from .taps import Observation

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_CUDA_MEMCPY_DEVICE_TO_HOST = 2


def unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here, or None when they can."""
    available, what = runtime.tensorrt_available()
    if not available:
        return what
    if runtime.current_gpu() is None:
        return (f"{what} is installed and builds engines here (for a named --compute-capability), but an engine runs "
                "only on a CUDA GPU and none is visible")
    return None


def engine_layers(inspector: dict) -> list[dict]:
    """The engine inspector's layers as {name, onnx_nodes, outputs, precision}."""
    layers = []
    for layer in inspector.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        nodes = _ONNX_LAYER.findall(str(layer.get("Metadata", ""))) or [n.strip() for n in str(layer.get("Name", "")).split(" + ")]
        inputs = layer.get("Inputs", [])
        datatype = str(inputs[0].get("Format/Datatype", "")) if inputs else ""
        layers.append({"name": layer.get("Name", ""), "onnx_nodes": nodes,
                       "outputs": [o.get("Name", "") for o in layer.get("Outputs", [])],
                       "precision": "int8" if "int8" in datatype.lower() else "float"})
    return layers


def layers_of(layers: list[Layer], inspected: list[dict]) -> dict[str, dict]:
    """Inspector layer name -> {engine layer, its output tensor or None when the layer was fused into a
    larger engine layer}."""
    located = {}
    for layer in layers:
        last = layer.onnx_nodes[-1] if layer.onnx_nodes else None
        holder = next((e for e in inspected if last in e["onnx_nodes"]), None)
        if holder is None:
            continue
        ends_here = holder["onnx_nodes"][-1] == last
        located[layer.name] = {"engine_layer": holder["name"], "precision": holder["precision"],
                               "tensor": holder["outputs"][0] if ends_here and holder["outputs"] else None}
    return located


def _cudart():
    """The CUDA runtime library (the one torch loaded), for copying debug tensors to the host."""
    import torch.cuda

    torch.cuda.init()
    package = Path(torch.__file__).parent
    for root in (package / "lib", package.parent / "nvidia"):  # torch's own copy, or the nvidia-* wheels
        for path in sorted(glob.glob(str(root / "**" / "libcudart.so*"), recursive=True)):
            return ctypes.CDLL(path)
    return ctypes.CDLL("libcudart.so")


class TensorRTTaps:
    """A debug-tensor engine of an int8 ONNX; ``run`` returns each observable layer's output."""

    def __init__(self, onnx_path: str | os.PathLike, graph: OnnxGraph, layers: list[Layer], max_batch: int) -> None:
        reason = unavailable_reason()
        if reason:
            raise UserError(f"TensorRT per-layer outputs need a GPU: {reason}")
        self.trt, flavour, version = runtime.import_tensorrt()
        self.label = f"{flavour} {version}"
        self.graph, self.layers = graph, layers
        self.engine = self._build(Path(onnx_path), max_batch)
        inspector = self.engine.create_engine_inspector()
        import json

        self.inspected = engine_layers(json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)))
        self.located = layers_of(layers, self.inspected)
        self.context = self.engine.create_execution_context()
        self.collected: dict[str, np.ndarray] = {}
        self.listener = self._listener()
        self.context.set_debug_listener(self.listener)
        self.context.unfused_tensors_debug_state = True
        self.cudart = _cudart()

    def _build(self, onnx_path: Path, max_batch: int):
        """The export's loaders with two changes: unfused tensors marked as debug tensors, and the
        builder's default settings (no workspace cap, no TF32 pin: the fusions are what is observed)."""
        trt = self.trt
        logger = runtime.make_logger(trt)
        parsed = loader.network_from_onnx(trt, logger, onnx_path, self.label)
        parsed.network.mark_unfused_tensors_as_debug_tensors()
        config = parsed.builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then lists ONNX nodes per layer
        loader.add_profile(parsed, config, BatchRange(1, max_batch, max_batch))
        plan = loader.engine_bytes(parsed, config, f"a debug engine from {onnx_path.name}")
        self.runtime = trt.Runtime(logger)  # must outlive the engine
        return self.runtime.deserialize_cuda_engine(plan)

    def _listener(self):
        trt, taps = self.trt, self
        dtypes = {trt.int8: np.int8, trt.float32: np.float32, trt.float16: np.float16}

        class Collector(trt.IDebugListener):
            def __init__(self) -> None:
                trt.IDebugListener.__init__(self)

            def process_debug_tensor(self, addr, location, type, shape, name, stream) -> bool:  # noqa: A002 (TensorRT's names)
                host = np.empty(tuple(shape), dtype=dtypes.get(type, np.float32))
                ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
                ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
                ctypes.pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
                ctypes.pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
                pointer = ctypes.pythonapi.PyCapsule_GetPointer(addr, ctypes.pythonapi.PyCapsule_GetName(addr))
                taps.cudart.cudaMemcpyAsync(ctypes.c_void_p(host.ctypes.data), ctypes.c_void_p(pointer),
                                            ctypes.c_size_t(host.nbytes), _CUDA_MEMCPY_DEVICE_TO_HOST, ctypes.c_void_p(stream))
                taps.cudart.cudaStreamSynchronize(ctypes.c_void_p(stream))
                taps.collected[name] = host
                return True

        return Collector()

    def run(self, batch: torch.Tensor) -> dict[str, Observation]:
        self.collected.clear()
        device_input = batch.to(torch.float32).cuda().contiguous()
        output_name = OUTPUT_NAME
        self.context.set_input_shape(INPUT_NAME, tuple(device_input.shape))
        logits = torch.empty(tuple(self.context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(INPUT_NAME, device_input.data_ptr())
        self.context.set_tensor_address(output_name, logits.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        self.collected[output_name] = logits.cpu().numpy()
        return {name: self._observation(layer, self.collected[found["tensor"]])
                for layer in self.layers
                for name, found in [(layer.name, self.located.get(layer.name))]
                if found and found["tensor"] in self.collected}

    def _observation(self, layer: Layer, value: np.ndarray) -> Observation:
        producer = self.graph.producer.get(layer.onnx_output)
        values = torch.from_numpy(np.ascontiguousarray(value))
        if producer is None or producer.op_type != "QuantizeLinear" or value.dtype != np.int8:
            return Observation(values.to(torch.float32))
        scale, zero_point, _ = self.graph.qparams(producer)
        return Observation(values, float(scale), int(zero_point) if zero_point is not None else 0, (-128, 127))

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        self.run(batch)
        return self.collected[OUTPUT_NAME]
