"""What to do about a layer the inspector ranks: a suggestion for quantization loss, a diagnosis for a
divergence between two int8 implementations.

A quantization loss is the int8 model's own error (the layer computed alone from FP32 inputs): fixed
by calibration or by keeping the layer in float. A divergence is two implementations of one int8
model disagreeing at a layer given the same int8 inputs: an export or runtime difference, which
``diagnose_divergence`` narrows down by comparing that layer's parameters in the ONNX file with the
artifact's (output scale, input scale, int8 weights, weight scales, bias and its int32 grid, Q/DQ on
every input), so the report names the parameter that differs rather than only the layer.
"""

from __future__ import annotations

import numpy as np
import torch

from ..export.qdq import bias_on_grid
from ..quantize.artifact import node_value
from ..quantize.calibration import METHODS
from .graph import GRAPH_INPUT, OnnxGraph
from .layers import Layer

CLIPPING_MATTERS = 1e-3  # a share of values cut off by calibration worth acting on (1 in 1,000)
_ALTERNATIVE_METHODS = ("mse", "entropy", "percentile")  # the methods that trade clipping against rounding
_RELATIVE_TOLERANCE = 1e-6  # float32 round trips of a scale through ONNX stay far inside this


def quantization_advice(layer: Layer, alone: dict, method: str, checkpoint: str) -> str:
    """A concrete next step for a layer that loses accuracy by itself (``alone``: its isolated figures)."""
    quantize = f"resnet-deploy quantize {checkpoint}"
    clipped = alone.get("clipped_fraction", 0.0)
    if clipped >= CLIPPING_MATTERS:
        if method == "minmax":
            return (f"{clipped:.2%} of its FP32 values on these held-out images exceed the calibrated range: calibrate on "
                    f"more images ({quantize} --method minmax --calib-size N with N above the current size)")
        return (f"{clipped:.2%} of its FP32 values fall outside the int8 range the '{method}' calibration chose: keep more "
                f"range ({quantize} --method minmax, or --method percentile --percentile 99.999)")
    if layer.name == GRAPH_INPUT:
        return (f"the image's quantizer (one scale for the three normalized channels) costs this much: keep the first "
                f"convolution in float ({quantize} --keep-float first)")
    if layer.kind == "add":
        alternative = next(m for m in _ALTERNATIVE_METHODS if m != method)
        return (f"rounding of the residual sum, not clipping: try a calibration that balances range and resolution "
                f"({quantize} --method {alternative}), or QAT ({quantize} --qat)")
    alternative = next(m for m in _ALTERNATIVE_METHODS if m != method and m in METHODS)
    return (f"rounding noise, not clipping: keep it in float ({quantize} --keep-float {layer.name}), calibrate with "
            f"--method {alternative}, or fine-tune with --qat, which learns to absorb it")


# --------------------------------------------------------------------------------------------- divergence


def _close(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=_RELATIVE_TOLERANCE, atol=0.0))


def _program_value(program: torch.fx.GraphModule, arg) -> np.ndarray | None:
    value = node_value(program, arg)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value) if isinstance(value, (int, float)) else None


def _program_nodes(program: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    return {node.name: node for node in program.graph.nodes}


def _scale_finding(graph: OnnxGraph, program: torch.fx.GraphModule, layer: Layer) -> list[str]:
    producer = graph.producer.get(layer.onnx_output)
    node = _program_nodes(program)[layer.program_output]
    if producer is None or producer.op_type != "QuantizeLinear" or len(node.args) < 2:
        return []
    onnx_scale, program_scale = graph.qparams(producer)[0], _program_value(program, node.args[1])
    if onnx_scale is None or program_scale is None or _close(onnx_scale, program_scale):
        return []
    return [f"its output scale in the ONNX ({float(np.asarray(onnx_scale).reshape(-1)[0]):.6g}, {producer.name}) differs from "
            f"the artifact's ({float(np.asarray(program_scale).reshape(-1)[0]):.6g}): the ONNX file was altered or exported "
            "from another calibration; export it again from this artifact"]


def _weighted_findings(graph: OnnxGraph, program: torch.fx.GraphModule, layer: Layer) -> list[str]:
    onnx_node = next(n for n in graph.nodes if n.name == layer.onnx_nodes[0])
    op = _program_nodes(program)[layer.program_node]
    findings = []
    act_dq, weight_dq = graph.dequantize_of(onnx_node.input[0]), graph.dequantize_of(onnx_node.input[1])
    program_act, program_weight = op.args[0], op.args[1]
    if act_dq is not None and isinstance(program_act, torch.fx.Node) and len(program_act.args) > 1:
        if not _close(graph.qparams(act_dq)[0], _program_value(program, program_act.args[1])):
            findings.append(f"the scale its input is read with ({act_dq.name}) differs from the artifact's")
    if weight_dq is not None and isinstance(program_weight, torch.fx.Node) and program_weight.args:
        onnx_weight = graph.values.get(weight_dq.input[0])
        artifact_weight = _program_value(program, program_weight.args[0])
        if onnx_weight is not None and artifact_weight is not None and not np.array_equal(onnx_weight, artifact_weight):
            findings.append(f"{int((onnx_weight != artifact_weight).sum())} of its int8 weights differ from the artifact's")
        if not _close(graph.qparams(weight_dq)[0], _program_value(program, program_weight.args[1])):
            findings.append("its per-channel weight scales differ from the artifact's")
    findings += _bias_findings(graph, program, onnx_node, op, act_dq, weight_dq)
    return findings


def _bias_findings(graph: OnnxGraph, program, onnx_node, op, act_dq, weight_dq) -> list[str]:
    if len(onnx_node.input) < 3 or onnx_node.input[2] not in graph.values or len(op.args) < 3:
        return []
    onnx_bias, artifact_bias = graph.values[onnx_node.input[2]], _program_value(program, op.args[2])
    findings = []
    if artifact_bias is not None and not _close(onnx_bias, artifact_bias):
        change = float(np.abs(onnx_bias.astype(np.float64) - artifact_bias.astype(np.float64)).max())
        findings.append(f"its bias differs from the artifact's (by up to {change:.3g})")
    if act_dq is not None and weight_dq is not None and not bias_on_grid(onnx_bias, act_dq, weight_dq, graph.values):
        findings.append("its bias is off the int32 grid (x_scale * w_scale): ONNX Runtime's QLinearConv rounds it to the "
                        "grid, TensorRT and the PyTorch program add it as it is; `resnet-deploy quantize` puts biases on "
                        "the grid, so re-export from such an artifact")
    return findings


def _add_findings(graph: OnnxGraph, program: torch.fx.GraphModule, layer: Layer) -> list[str]:
    onnx_node = next(n for n in graph.nodes if n.name == layer.onnx_nodes[0])
    float_inputs = [tensor for tensor in graph.computed_inputs(onnx_node) if graph.dequantize_of(tensor) is None]
    add = _program_nodes(program)[layer.program_node]
    program_quantized = sum(isinstance(arg, torch.fx.Node) and str(arg.target).startswith("quantized_decomposed.dequantize")
                            for arg in add.args[:2])
    if len(graph.computed_inputs(onnx_node)) - len(float_inputs) >= program_quantized:
        return []  # the program leaves as many inputs in float (quantize --residual-conv-input float)
    return [f"its input {tensor} comes from {graph.op_of(tensor)}, not DequantizeLinear, while the int8 program quantizes "
            "it: a Q/DQ pair is missing in the ONNX on this residual input"
            for tensor in float_inputs]


def diagnose_divergence(graph: OnnxGraph, program: torch.fx.GraphModule, layer: Layer, other: str) -> str:
    """Why ``other`` computes ``layer`` differently from the int8 program given the same int8 inputs."""
    findings = _scale_finding(graph, program, layer)
    if layer.kind in ("conv", "fc"):
        findings += _weighted_findings(graph, program, layer)
    elif layer.kind == "add":
        findings += _add_findings(graph, program, layer)
    if findings:
        return "; ".join(findings)
    if layer.name == GRAPH_INPUT:
        return (f"the ONNX quantizes the image with the artifact's scale; {other}'s QuantizeLinear divides in float32 and the "
                "reference in float64, so values within a float32 rounding of a half step round apart (1 LSB): "
                "arithmetic, not a bug, and the seed of most downstream 1-LSB differences")
    return (f"the ONNX matches the artifact here (scales, weights, bias): the difference is {other}'s arithmetic "
            "(requantization rounding); if it is large, compare with a third implementation before suspecting the model")
