"""ONNX Runtime's per-layer outputs, read from the graph ONNX Runtime actually runs.

Adding a graph output to a Q/DQ model is not neutral: ONNX Runtime fuses DequantizeLinear -> Conv ->
QuantizeLinear into QLinearConv only when nothing else reads the tensors inside the group, and a graph
output (or any extra reader) on a QuantizeLinear next to a convolution makes it keep the float Conv
instead (measured: all 9 QLinearConv of a ResNet20 fall back to float; ``naive_exposure`` records it
on every run). The layer outputs would then come from another program than the one deployed.

So the taps go on ONNX Runtime's *optimised* graph (``qdq.ort_optimized_model`` at the level deployment
uses, ``parity.onnx_session``'s: all optimisations); the observed tensors are added as outputs of that graph, which is then run with optimisations off, so
nothing is fused, renamed or re-laid-out again. ``check_exposure`` asserts the logits are bit-exact
with the ordinary session's.

The optimised graph renames tensors (int8 becomes uint8 with a shifted zero-point, QLinearConv runs
in NHWC between Transposes) but keeps the names of the nodes that survive, so each observed tensor is
found by the node that produced or read it (``locate``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..export.parity import compare_logits, onnx_session
from ..export.qdq import ort_int8_kernels, ort_optimized_model
from ..optional import import_onnxruntime
from .graph import GRAPH_INPUT, OnnxGraph
from .layers import Layer
from .taps import Observation

# QLinearConv, QLinearAdd, QLinearMatMul ...: inputs 6 and 7 are the output's scale and zero-point.
_QLINEAR_OUTPUT_GRID = (6, 7)
_NCHW_FROM_NHWC = [0, 3, 1, 2]
_LAYOUT_OPS = ("Transpose", "Reshape")  # move values, keep their grid


@dataclass(frozen=True)
class Tap:
    """Where a layer's output is in the optimised graph, and the grid its integers are on."""

    tensor: str
    scale: float | None = None
    zero_point: int = 0
    channels_last: bool = False  # ONNX Runtime keeps it NHWC (its layout transformer's int8 kernels)


def _unoptimised_session(path: Path, threads: int | None):
    ort = import_onnxruntime("inspecting the ONNX Runtime int8 model")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # it is optimised already
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------- locating


def _grid(graph: OnnxGraph, tensor: str) -> tuple[float | None, int]:
    """(scale, zero_point) of the integers in ``tensor``, or (None, 0) for a float tensor."""
    producer = graph.producer.get(tensor)
    while producer is not None and producer.op_type in _LAYOUT_OPS:
        producer = graph.producer.get(producer.input[0])
    if producer is not None and producer.op_type == "QuantizeLinear":
        return _as_grid(*graph.qparams(producer)[:2])
    if producer is not None and producer.op_type.startswith("QLinear"):
        scale, zero_point = (graph.values.get(producer.input[i]) for i in _QLINEAR_OUTPUT_GRID)
        return _as_grid(scale, zero_point)
    reader = next((n for n in graph.consumers.get(tensor, []) if n.op_type == "DequantizeLinear"), None)
    return _as_grid(*graph.qparams(reader)[:2]) if reader is not None else (None, 0)


def _as_grid(scale, zero_point) -> tuple[float | None, int]:
    if scale is None:
        return None, 0
    return float(np.asarray(scale).reshape(-1)[0]), int(np.asarray(zero_point).reshape(-1)[0]) if zero_point is not None else 0


_NHWC_FROM_NCHW = [0, 2, 3, 1]
_LAYOUT_FIXING_OPS = ("Conv", "FusedConv", "QLinearConv", "Gemm", "QGemm", "MatMul", "ReduceMean", "GlobalAveragePool")


def _channels_last(graph: OnnxGraph, tensor: str) -> bool:
    """Is ``tensor`` NHWC? Walk back through layout-preserving ops to the op that fixed its layout: a
    Transpose, an op with ``channels_last=1``, or an NCHW op (or the NCHW graph input)."""
    producer = graph.producer.get(tensor)
    while producer is not None:
        if any(a.name == "channels_last" and a.i for a in producer.attribute):
            return True
        if producer.op_type == "Transpose":
            return next((list(a.ints) for a in producer.attribute if a.name == "perm"), None) == _NHWC_FROM_NCHW
        inputs = graph.computed_inputs(producer)
        if producer.op_type in _LAYOUT_FIXING_OPS or not inputs:
            return False
        producer = graph.producer.get(inputs[0])
    return False


def _nchw(graph: OnnxGraph, tensor: str) -> str:
    """The NCHW copy of an NHWC tensor, when its sole reader is the Transpose back."""
    reader = graph.sole_consumer(tensor)
    if reader is not None and reader.op_type == "Transpose":
        perm = next((list(a.ints) for a in reader.attribute if a.name == "perm"), None)
        if perm == _NCHW_FROM_NHWC:
            return reader.output[0]
    return tensor


def locate(original: OnnxGraph, optimised: OnnxGraph, layer: Layer) -> Tap | None:
    """The optimised graph's tensor holding ``layer``'s observed output; None when ONNX Runtime fused it
    away (then it exists only inside a kernel)."""
    by_name = {node.name: node for node in optimised.nodes}
    tensor = layer.onnx_output
    producer = original.producer.get(tensor)
    found = None
    if tensor in optimised.producer or tensor in optimised.inputs:
        found = tensor
    elif producer is not None and producer.name in by_name:  # the node survived, its output was renamed
        found = by_name[producer.name].output[0]
    else:
        reader = next((n for n in original.consumers.get(tensor, []) if n.name in by_name), None)
        if reader is not None:  # a surviving reader still reads it, under its new name
            found = by_name[reader.name].input[list(reader.input).index(tensor)]
        elif layer.name != GRAPH_INPUT:  # fused into the kernel named after the layer's op
            fused = next((n for n in optimised.nodes if n.op_type.startswith("QLinear")
                          and (n.name == layer.onnx_nodes[0] or n.name.startswith(layer.onnx_nodes[0] + "_token"))), None)
            found = _nchw(optimised, fused.output[0]) if fused is not None else None
    if found is None:
        return None
    return Tap(found, *_grid(optimised, found), channels_last=_channels_last(optimised, found))


# --------------------------------------------------------------------------------------------- running


def _elem_type(graph: OnnxGraph, tensor: str, tap: Tap) -> int:
    import onnx

    declared = {vi.name: vi.type.tensor_type.elem_type for vi in graph.model.graph.value_info}
    if declared.get(tensor):
        return declared[tensor]
    producer = graph.producer.get(tensor)
    while producer is not None and producer.op_type in _LAYOUT_OPS:
        producer = graph.producer.get(producer.input[0])
    if tap.scale is None:
        return onnx.TensorProto.FLOAT
    zero_point_input = producer.input[2] if producer is not None and producer.op_type == "QuantizeLinear" else None
    value = graph.values.get(zero_point_input) if zero_point_input else None
    return onnx.helper.np_dtype_to_tensor_dtype(value.dtype) if value is not None else onnx.TensorProto.UINT8


class OnnxTaps:
    """ONNX Runtime's optimised graph of an int8 ONNX, with every locatable layer output exposed."""

    def __init__(self, onnx_path: str | os.PathLike, graph: OnnxGraph, layers: list[Layer], workdir: Path,
                 threads: int | None = None) -> None:
        import onnx

        self.onnx_path, self.threads = Path(onnx_path), threads
        optimised = OnnxGraph(ort_optimized_model(onnx_path, "all"))  # deployment's level: parity.onnx_session's
        self.kernels = dict(sorted(Counter(node.op_type for node in optimised.nodes).items()))
        self.taps = {layer.name: locate(graph, optimised, layer) for layer in layers}
        exposed = onnx.ModelProto()
        exposed.CopyFrom(optimised.model)
        present = set(optimised.outputs)
        for tap in dict.fromkeys(t for t in self.taps.values() if t is not None and t.tensor not in present):
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(tap.tensor, _elem_type(optimised, tap.tensor, tap), None))
            present.add(tap.tensor)
        self.path = Path(workdir) / "optimised-exposed.onnx"
        onnx.save(exposed, str(self.path))
        self.session = _unoptimised_session(self.path, threads)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def unobservable(self) -> list[str]:
        return [name for name, tap in self.taps.items() if tap is None]

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        return self.session.run([self.output_names[0]], {self.session.get_inputs()[0].name: batch.numpy()})[0]

    def run(self, batch: torch.Tensor) -> dict[str, Observation]:
        """Layer name -> ONNX Runtime's output on ``batch`` (layers fused away are absent)."""
        values = dict(zip(self.output_names, self.session.run(None, {self.session.get_inputs()[0].name: batch.numpy()})))
        observed = {}
        for name, tap in self.taps.items():
            if tap is None:
                continue
            value = torch.from_numpy(np.ascontiguousarray(values[tap.tensor]))
            if tap.channels_last and value.dim() == 4:
                value = value.permute(0, 3, 1, 2).contiguous()
            if tap.scale is None:
                observed[name] = Observation(value)
            else:
                info = np.iinfo(values[tap.tensor].dtype)
                observed[name] = Observation(value, tap.scale, tap.zero_point, (int(info.min), int(info.max)))
        return observed

    def check_exposure(self, batch: torch.Tensor) -> dict:
        """Logits of the exposed graph against the ordinary session's, bit for bit (they must be equal)."""
        reference = onnx_session(self.onnx_path, self.threads)
        logits = reference.run(None, {reference.get_inputs()[0].name: batch.numpy()})[0]
        exposed = self.logits(batch)
        record = {"method": "outputs added to ONNX Runtime's optimised graph, run without re-optimising",
                  "logits_bit_exact": bool(np.array_equal(logits, exposed)), "images": int(len(batch)),
                  "kernels": self.kernels, "fused_away": self.unobservable}
        if not record["logits_bit_exact"]:
            record["logit_effect"] = compare_logits(logits, exposed)
        return record


def naive_exposure(onnx_path: str | os.PathLike, graph: OnnxGraph, layers: list[Layer], workdir: Path,
                   batch: torch.Tensor, threads: int | None = None) -> dict:
    """What adding the layer outputs to the *original* graph would do: ONNX Runtime's fused kernels
    before and after (``qdq.ort_int8_kernels``), and the effect on the logits."""
    import onnx

    exposed = onnx.ModelProto()
    exposed.CopyFrom(graph.model)
    present = set(graph.outputs)
    for layer in layers:
        if layer.onnx_output not in present and layer.onnx_output not in graph.inputs:
            producer = graph.producer[layer.onnx_output]
            integer = producer.op_type == "QuantizeLinear"
            elem = graph.values[producer.input[2]].dtype if integer and len(producer.input) > 2 else np.float32
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(
                layer.onnx_output, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(elem)), None))
            present.add(layer.onnx_output)
    path = Path(workdir) / "naively-exposed.onnx"
    onnx.save(exposed, str(path))
    before, after = ort_int8_kernels(onnx_path), ort_int8_kernels(path)
    feed = {graph.inputs[0]: batch.numpy()}
    original = onnx_session(onnx_path, threads).run(None, feed)[0]
    changed = onnx_session(path, threads).run([graph.outputs[0]], feed)[0]
    return {"kernels_before": before, "kernels_after": after, "fusions_unchanged": before == after,
            "logits_bit_exact": bool(np.array_equal(original, changed)), "logit_effect": compare_logits(original, changed)}
