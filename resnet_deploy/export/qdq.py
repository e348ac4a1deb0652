"""Checks of int8 Q/DQ ONNX graphs: the form TensorRT accepts, and the form ONNX Runtime fuses.

TensorRT's explicit quantization (``tensorrt`` scheme) needs: int8 QuantizeLinear/DequantizeLinear with
zero-point 0 everywhere (the ONNX parser rejects any other zero-point), weights quantized per output
channel (axis 0), and no int32 bias DequantizeLinear (ONNX Runtime's own quantizer emits those; the
parser rejects them). Biases stay float and TensorRT folds them into the int8 kernel.

ONNX Runtime on x86 (``cpu`` scheme) runs a convolution with int8 kernels when the graph has
DQ(uint8 activation) and DQ(int8 weight) -> Conv -> Q: its graph optimiser fuses that into
``QLinearConv``. ``ort_int8_kernels`` asks ONNX Runtime for its optimised graph and counts what it
actually fused, so "int8 on CPU" is measured, not assumed.

The classifier is the exception: ONNX Runtime's Gemm fusion (DQ, DQ -> Gemm -> QGemm) takes a bias
only as DequantizeLinear(int32), not the float bias the PyTorch exporter writes, so the FC ran as
DequantizeLinear + float Gemm. ``int32_linear_biases`` rewrites that bias for the ``cpu`` scheme
(exactly: quantize puts it on the int32 grid), and the FC runs as one QGemm with float logits.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..optional import import_onnxruntime

INT8_ELEM = 3  # onnx.TensorProto.INT8
UINT8_ELEM = 2
INT32_ELEM = 6


def graph_constants(model_proto) -> dict[str, np.ndarray]:
    """The graph's initializers and Constant nodes' values as arrays, by tensor name."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model_proto.graph.initializer}
    for node in model_proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def analyse_qdq(model_proto) -> dict:
    """Counts describing the Q/DQ structure of a graph (stored in the manifest as ``qdq``)."""
    values = graph_constants(model_proto)
    producers = {out: node for node in model_proto.graph.node for out in node.output}
    activation_dtypes: Counter = Counter()
    nonzero_zero_points = 0
    int32_dequantize = 0
    weight_dq = {"per_channel_axis0": 0, "per_channel_other_axis": 0, "per_tensor": 0, "nonzero_zero_point": 0, "not_int8": 0}
    for node in model_proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero_point = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in values
        if is_weight:
            data = values[node.input[0]]
            if data.dtype == np.int32:
                int32_dequantize += 1
                continue
            scale = values.get(node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale is not None and scale.size > 1:
                weight_dq["per_channel_axis0" if axis == 0 else "per_channel_other_axis"] += 1
            else:
                weight_dq["per_tensor"] += 1
            if data.dtype != np.int8:
                weight_dq["not_int8"] += 1
            if zero_point is not None and np.any(zero_point != 0):
                weight_dq["nonzero_zero_point"] += 1
            continue
        dtype = str(zero_point.dtype) if zero_point is not None else "uint8 (default)"
        activation_dtypes[f"{node.op_type}:{dtype}"] += 1
        if zero_point is not None and np.any(zero_point != 0):
            nonzero_zero_points += 1
    convs = [n for n in model_proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    consumers = _consumers(model_proto)
    quantized = 0
    float_output = 0
    bias_off_grid = 0
    for node in convs:
        sources = [producers.get(name) for name in node.input[:2]]
        if all(src is not None and src.op_type == "DequantizeLinear" for src in sources):
            quantized += node.op_type == "Conv"
            float_output += node.op_type == "Conv" and not _output_quantized(node, consumers)
            if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in values:
                bias_off_grid += not bias_on_grid(values[node.input[2]], sources[0], sources[1], values)
    return {
        "quantize_linear": sum(1 for n in model_proto.graph.node if n.op_type == "QuantizeLinear"),
        "dequantize_linear": sum(1 for n in model_proto.graph.node if n.op_type == "DequantizeLinear"),
        "activation_qdq_by_dtype": dict(sorted(activation_dtypes.items())),
        "activation_nonzero_zero_points": nonzero_zero_points,
        "weights": weight_dq,
        "int32_bias_dequantize": int32_dequantize,
        "convolutions": sum(1 for n in convs if n.op_type == "Conv"),
        "quantized_convolutions": quantized,
        # e.g. a residual Add's conv input left in float (quantize --residual-conv-input float): ONNX
        # Runtime fuses DQ -> Conv (-> Relu) -> Q into QLinearConv only, so it runs these in float
        "quantized_convolutions_float_output": float_output,
        "conv_bias_off_int32_grid": bias_off_grid,
    }


def _consumers(model_proto) -> dict[str, list]:
    readers: dict[str, list] = {}
    for node in model_proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _output_quantized(node, consumers: dict[str, list]) -> bool:
    """Does ``node``'s output (through a Relu) go only into QuantizeLinear?"""
    readers = consumers.get(node.output[0], [])
    if len(readers) == 1 and readers[0].op_type == "Relu":
        readers = consumers.get(readers[0].output[0], [])
    return bool(readers) and all(reader.op_type == "QuantizeLinear" for reader in readers)


def bias_on_grid(bias: np.ndarray, activation_dq, weight_dq, values: dict) -> bool:
    """Is the float bias a whole multiple of x_scale * w_scale (the int32 bias an int8 kernel adds)?

    ONNX Runtime's QLinearConv takes an int32 bias, so it rounds a float bias to that grid; TensorRT adds
    it in float. A bias off the grid therefore gives two backends two slightly different models (a
    fraction of an output LSB, enough to flip roundings that then spread through the network).
    """
    x_scale = values.get(activation_dq.input[1])
    w_scale = values.get(weight_dq.input[1])
    if x_scale is None or w_scale is None:
        return True
    step = np.float64(x_scale) * w_scale.astype(np.float64).reshape(-1)
    ratio = bias.astype(np.float64).reshape(-1) / step
    # A float32 bias holds k * step only to 24 bits: for k in the tens of thousands that is ~1e-3 of a
    # unit, still far from the half unit at which rounding would pick another integer.
    tolerance = 1e-3 + np.abs(ratio) * 2.0**-22
    return bool(np.all(np.abs(ratio - np.round(ratio)) < tolerance))


def qdq_problems_of(analysis: dict, scheme: str) -> list[str]:
    """What makes a graph unfit for its scheme (empty when fine)."""
    problems = []
    weights = analysis["weights"]
    if analysis["quantized_convolutions"] == 0:
        problems.append("no convolution has DequantizeLinear on both its input and its weight")
    if weights["per_tensor"] or weights["per_channel_other_axis"]:
        problems.append(f"{weights['per_tensor'] + weights['per_channel_other_axis']} weight(s) not quantized per channel on axis 0")
    if weights["not_int8"]:
        problems.append(f"{weights['not_int8']} weight(s) not stored as int8")
    if weights["nonzero_zero_point"]:
        problems.append(f"{weights['nonzero_zero_point']} weight(s) with non-zero zero-points (weights must be symmetric)")
    if scheme == "tensorrt":
        not_int8 = {k: v for k, v in analysis["activation_qdq_by_dtype"].items() if not k.endswith(":int8")}
        if not_int8:
            problems.append(f"TensorRT needs int8 activations, found {not_int8}")
        if analysis["activation_nonzero_zero_points"]:
            problems.append(f"{analysis['activation_nonzero_zero_points']} activation Q/DQ with non-zero zero-points (TensorRT rejects them)")
        if analysis["int32_bias_dequantize"]:
            problems.append(f"{analysis['int32_bias_dequantize']} int32 bias DequantizeLinear (TensorRT rejects them)")
    return problems


def qdq_problems(path: str | os.PathLike, scheme: str) -> list[str]:
    import onnx

    return qdq_problems_of(analyse_qdq(onnx.load(str(path))), scheme)


def int32_linear_biases(model_proto) -> int:
    """Give each quantized Gemm (both inputs from DequantizeLinear) its float bias as
    DequantizeLinear(int32 units, x_scale * w_scale), the form ONNX Runtime fuses into QGemm, in place.

    Exact for a bias on the int32 grid (the quantize stage snaps every quantized layer's bias to it);
    a bias off the grid, or a Gemm with alpha/beta other than 1, is left as it is. Only for the
    ``cpu`` scheme: TensorRT's parser rejects int32 bias DequantizeLinear. Returns how many changed.
    """
    from onnx import helper, numpy_helper

    values = graph_constants(model_proto)
    producers = {out: node for node in model_proto.graph.node for out in node.output}
    rewritten = 0
    for node in list(model_proto.graph.node):
        dequantized = _dequantized_inputs(node, producers, values)
        if dequantized is None or not _is_plain_gemm(node):
            continue
        x_dq, w_dq = dequantized
        bias = values[node.input[2]]
        if not bias_on_grid(bias, x_dq, w_dq, values):
            continue
        step = (np.float64(values[x_dq.input[1]]) * values[w_dq.input[1]].astype(np.float64).reshape(-1)) * np.ones(bias.shape)
        units = np.round(bias.astype(np.float64) / step).astype(np.int32)
        prefix = f"{node.name or node.output[0]}_bias"
        model_proto.graph.initializer.extend([
            numpy_helper.from_array(units, f"{prefix}_int32"), numpy_helper.from_array(step.astype(np.float32), f"{prefix}_scale"),
        ])
        old_bias, node.input[2] = node.input[2], f"{prefix}_dq"
        dequantize = helper.make_node("DequantizeLinear", [f"{prefix}_int32", f"{prefix}_scale"], [f"{prefix}_dq"], name=f"{prefix}_dq", axis=0)
        model_proto.graph.node.insert(list(model_proto.graph.node).index(node), dequantize)  # keeps topological order
        _drop_unused_initializer(model_proto.graph, old_bias)
        rewritten += 1
    return rewritten


def _dequantized_inputs(node, producers: dict, values: dict):
    """(activation DQ, weight DQ) of a Gemm with a constant float bias, else None."""
    if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in values:
        return None
    sources = [producers.get(name) for name in node.input[:2]]
    if not all(src is not None and src.op_type == "DequantizeLinear" for src in sources):
        return None
    if values[node.input[2]].dtype != np.float32:
        return None
    return sources[0], sources[1]


def _is_plain_gemm(node) -> bool:
    """alpha = beta = 1 and no transposed A: the bias is added as it is to A @ B(^T)."""
    attributes = {a.name: a for a in node.attribute}
    alpha = attributes["alpha"].f if "alpha" in attributes else 1.0
    beta = attributes["beta"].f if "beta" in attributes else 1.0
    trans_a = attributes["transA"].i if "transA" in attributes else 0
    return alpha == 1.0 and beta == 1.0 and trans_a == 0


def _drop_unused_initializer(graph, name: str) -> None:
    if any(name in node.input for node in graph.node) or any(output.name == name for output in graph.output):
        return
    kept = [init for init in graph.initializer if init.name != name]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def ort_optimized_model(path: str | os.PathLike, level: str = "all"):
    """The graph ONNX Runtime's CPU provider actually runs (``SessionOptions.optimized_model_filepath``)
    at graph optimisation ``level`` ("basic", "extended" or "all"), as a ModelProto."""
    import onnx

    ort = import_onnxruntime("reading the graph ONNX Runtime optimises")
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(optimized)
        options.intra_op_num_threads = 1  # only the graph is wanted: no thread pool
        options.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return onnx.load(str(optimized))


def ort_int8_kernels(path: str | os.PathLike) -> dict:
    """Let ONNX Runtime (CPU, all optimisations) optimise the model and count what runs as int8.

    Returns counts of the optimised graph: ``qlinear_conv`` (convolutions fused to int8 kernels),
    ``float_conv`` (convolutions left in float: Conv, FusedConv, NCHWc Conv), other QLinear* ops,
    ``qgemm`` / ``float_gemm`` (the classifier as one int8 QGemm or as a float Gemm/MatMul),
    ``float_add`` (residual adds left in float, each a DQ/Add/ReLU round trip), the Q/DQ nodes left
    over (each a float<->int8 conversion at run time) and ``nodes``, all the nodes ORT runs.
    """
    model_proto = ort_optimized_model(path, "all")
    ops = Counter(node.op_type for node in model_proto.graph.node)
    return {
        "qlinear_conv": ops.get("QLinearConv", 0),
        "float_conv": ops.get("Conv", 0) + ops.get("FusedConv", 0),
        "other_qlinear": {op: n for op, n in sorted(ops.items()) if op.startswith("QLinear") and op != "QLinearConv"},
        "qgemm": ops.get("QGemm", 0),
        "float_gemm": ops.get("Gemm", 0) + ops.get("FusedGemm", 0) + ops.get("MatMul", 0),
        "float_add": ops.get("Add", 0),
        "quantize_linear_left": ops.get("QuantizeLinear", 0),
        "dequantize_linear_left": ops.get("DequantizeLinear", 0),
        "nodes": len(model_proto.graph.node),
        "onnxruntime": import_onnxruntime("reading the graph ONNX Runtime optimises").__version__,
    }
