"""A PT2E quantizer for CIFAR ResNets with two int8 schemes: TensorRT's and x86 CPUs'.

Where Q/DQ pairs go (TensorRT's explicit-quantization rules, which ONNX Runtime's QDQ fusions share):

* every quantized Conv and Linear has its activation input and its weight quantized; weights
  per-output-channel (axis 0) and symmetric; the bias stays float (TensorRT and ONNX Runtime fold it
  into the int32 accumulator themselves);
* nothing sits between a Conv, its BatchNorm and its ReLU (BN is folded into the conv for PTQ and
  trained folded for QAT), so the three fuse into one int8 kernel; the ReLU's output is quantized;
* both inputs of every residual Add are quantized by default (``residual_conv_input="int8"``), so
  ONNX Runtime runs every conv as QLinearConv and the Add as QLinearAdd; the ReLU after the Add
  quantizes the sum. ``residual_conv_input="float"`` leaves the Add's convolution-side input
  unquantized (the shortcut input stays quantized): OpenVINO's CPU plugin fuses that Add into the
  convolution and, when a quantizer sits between them, skips its rounding (it still clips), so only
  without that quantizer does OpenVINO compute the same model as PyTorch. It is also the placement
  TensorRT's guide recommends for the conv + Add fusion (``inspect --lint``); ONNX Runtime then runs
  each such conv in float (no QuantizeLinear after it to fuse into QLinearConv);
* ops that only move values (the option-A shortcut's strided slice and zero pad, flatten) share the
  scale of their input, so the shortcut branch adds no rounding of its own;
* layers named in ``keep_float`` keep float weights and inputs; their neighbours stay int8.

Schemes (``target``):

* ``tensorrt``: signed int8, symmetric, zero-point 0 for every tensor. After a ReLU only the
  non-negative half of the grid is used (7 bits of resolution): TensorRT accepts nothing else.
* ``cpu``: U8S8, the layout x86 int8 kernels (VNNI ``vpdpbusd``, oneDNN, ONNX Runtime's MLAS) are
  fastest with: unsigned 8-bit asymmetric activations (all 8 bits used after a ReLU), signed
  symmetric per-channel weights.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch.fx import GraphModule, Node

from ..errors import UserError
from ..quantize_choices import DEFAULT_RESIDUAL_CONV_INPUT, RESIDUAL_CONV_INPUTS, TARGETS
from . import calibration
from .capture import capture

_aten = torch.ops.aten
CONV_OPS = {_aten.conv2d.default, _aten.convolution.default}
LINEAR_OPS = {_aten.linear.default}
BN_OPS = {_aten.batch_norm.default, _aten._native_batch_norm_legit_no_training.default}
RELU_OPS = {_aten.relu.default, _aten.relu_.default}
ADD_OPS = {_aten.add.Tensor, _aten.add_.Tensor}
# Ops whose output holds only values of their input (or exact zeros): they share its quantization.
VALUE_PRESERVING_OPS = {
    _aten.slice.Tensor,
    _aten.pad.default,
    _aten.constant_pad_nd.default,
    _aten.flatten.using_ints,
    _aten.view.default,
    _aten.reshape.default,
    _aten.max_pool2d.default,
}

ANNOTATION_KEY = "quantization_annotation"


@dataclass(frozen=True)
class Int8Scheme:
    """The integer formats of one target. Ranges are inclusive."""

    target: str
    activation_dtype: torch.dtype
    activation_symmetric: bool
    activation_range: tuple[int, int]
    weight_range: tuple[int, int] = (-127, 127)  # narrow range: symmetric grid, as TensorRT recommends

    @property
    def activation_qscheme(self) -> torch.qscheme:
        return torch.per_tensor_symmetric if self.activation_symmetric else torch.per_tensor_affine

    def describe(self) -> dict:
        return {
            "target": self.target,
            "activations": {
                "dtype": str(self.activation_dtype).removeprefix("torch."),
                "scheme": "symmetric" if self.activation_symmetric else "asymmetric",
                "granularity": "per-tensor",
                "range": list(self.activation_range),
            },
            "weights": {
                "dtype": "int8",
                "scheme": "symmetric",
                "granularity": "per-output-channel (axis 0)",
                "range": list(self.weight_range),
            },
            "bias": "float32",
        }


def scheme_for(target: str) -> Int8Scheme:
    """The int8 scheme of ``target`` ("tensorrt" or "cpu")."""
    if target == "tensorrt":
        # [-128, 127]: what ONNX QuantizeLinear saturates to, so torch and TensorRT round alike.
        return Int8Scheme("tensorrt", torch.int8, True, (-128, 127))
    if target == "cpu":
        return Int8Scheme("cpu", torch.uint8, False, (0, 255))
    raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")


def layer_name(node: Node) -> str:
    """The module path (``layers.0.1.conv2``, ``fc``) that produced ``node``, from export metadata."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def quantizable_layers(graph_module: GraphModule) -> list[str]:
    """Names of the Conv and Linear layers of a captured model, in graph order."""
    names = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target in CONV_OPS | LINEAR_OPS:
            names.append(layer_name(node))
    return names


def resolve_layer_names(requested: Iterable[str], available: Sequence[str]) -> list[str]:
    """Map user names to layer names: exact names, plus ``first`` (first conv) and ``last`` (last layer).

    An unknown name is a UserError listing the choices, so a typo never silently quantizes a layer.
    """
    resolved = []
    for name in requested:
        name = name.strip()
        if not name:
            continue
        if name == "first":
            resolved.append(available[0])
        elif name == "last":
            resolved.append(available[-1])
        elif name in available:
            resolved.append(name)
        else:
            raise UserError(
                f"--keep-float: no layer named {name!r}; choose from first, last, {', '.join(available)}"
            )
    return list(dict.fromkeys(resolved))


def resolve_keep_float(model: torch.nn.Module, keep_float: Iterable[str]) -> list[str]:
    """``--keep-float`` names resolved against the quantizable layers of ``model`` (captured only
    when there are names to resolve)."""
    keep_float = list(keep_float)
    if not keep_float:
        return []
    return resolve_layer_names(keep_float, quantizable_layers(capture(model)))


def build_quantizer(scheme: Int8Scheme, method: str, percentile: float, keep_float: Iterable[str], qat: bool = False,
                    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT):
    """The quantizer of ``scheme`` with the observers of ``method`` (fake-quantizers under QAT)."""
    if qat:
        from torchao.quantization.pt2e import FakeQuantize

        activation = FakeQuantize.with_args(observer=calibration.qat_activation_observer(method, scheme, percentile))
        weight = FakeQuantize.with_args(observer=calibration.qat_weight_observer())
    else:
        activation = calibration.activation_observer(method, scheme, percentile)
        weight = calibration.weight_observer()
    return make_quantizer(scheme, activation, weight, keep_float, residual_conv_input)


def make_quantizer(
    scheme: Int8Scheme,
    activation_observer,
    weight_observer,
    keep_float: Iterable[str] = (),
    residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT,
):
    """A torchao ``Quantizer`` that places Q/DQ as the module docstring says."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    check_residual_conv_input(residual_conv_input)
    activation_spec = activation_quantization_spec(scheme, activation_observer)
    weight_spec = weight_quantization_spec(scheme, weight_observer)
    float_layers = frozenset(keep_float)

    class _Quantizer(Quantizer):
        def annotate(self, model: GraphModule) -> GraphModule:
            annotate_graph(model.graph, activation_spec, weight_spec, float_layers, residual_conv_input)
            return model

        def validate(self, model: GraphModule) -> None:
            pass

    return _Quantizer()


def check_residual_conv_input(value: str) -> str:
    if value not in RESIDUAL_CONV_INPUTS:
        raise UserError(f"--residual-conv-input must be one of {', '.join(RESIDUAL_CONV_INPUTS)}, got {value!r}")
    return value


def activation_quantization_spec(scheme: Int8Scheme, observer):
    """Per-tensor activations in the scheme's integer type and range."""
    return _quantization_spec(scheme.activation_dtype, observer, scheme.activation_range, scheme.activation_qscheme)


def weight_quantization_spec(scheme: Int8Scheme, observer):
    """int8 weights, symmetric, per output channel (axis 0)."""
    return _quantization_spec(torch.int8, observer, scheme.weight_range, torch.per_channel_symmetric, ch_axis=0)


def _quantization_spec(dtype: torch.dtype, observer, value_range: tuple[int, int], qscheme: torch.qscheme, **channel_axis):
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    low, high = value_range
    return QuantizationSpec(dtype=dtype, observer_or_fake_quant_ctr=observer, quant_min=low, quant_max=high, qscheme=qscheme,
                            **channel_axis)


def annotate_graph(graph, activation_spec, weight_spec, float_layers: frozenset[str],
                   residual_conv_input: str = DEFAULT_RESIDUAL_CONV_INPUT) -> None:
    """Mark every quantization point of ``graph`` (a captured model's) with its spec, in three passes;
    ``residual_conv_input`` "float" leaves each residual Add's convolution-side input unquantized."""
    quantized_compute = {
        node for node in graph.nodes
        if node.op == "call_function" and node.target in CONV_OPS | LINEAR_OPS and layer_name(node) not in float_layers
    }
    # 1. Conv / Linear: input activation and weight.
    for node in quantized_compute:
        source, weight = node.args[0], node.args[1]
        _annotate(node, {source: activation_spec, weight: weight_spec})
    # 2. ReLU outputs, where a quantized consumer reads them (conv+BN+ReLU fuse: nothing is quantized
    # between them).
    for node in graph.nodes:
        if node.op == "call_function" and node.target in RELU_OPS and _feeds_quantized(node, quantized_compute):
            _annotate(node, {}, activation_spec)
    # 3. Residual adds: both inputs (or only the shortcut's).
    for node in graph.nodes:
        if node.op == "call_function" and node.target in ADD_OPS and is_tensor_add(node):
            float_input = residual_conv_side(node) if residual_conv_input == "float" else None
            _annotate(node, _residual_add_inputs(node, activation_spec, float_input))


def residual_conv_side(node: Node) -> Node | None:
    """The input of residual Add ``node`` that a convolution computes (through its BatchNorm, when not
    folded yet); with two (an option-B projection shortcut) the first, the block's own branch as the
    models write it (``out + shortcut(x)``). None when neither input comes from a convolution."""
    conv_inputs = [arg for arg in node.args[:2] if _computed_by_conv(arg)]
    return conv_inputs[0] if conv_inputs else None


def _computed_by_conv(node: Node) -> bool:
    if node.op == "call_function" and node.target is operator.getitem:
        node = node.args[0]  # BatchNorm ops that return (output, mean, var)
    if node.op == "call_function" and node.target in BN_OPS:
        node = node.args[0]
    return node.op == "call_function" and node.target in CONV_OPS


def _residual_add_inputs(node: Node, activation_spec, float_input: Node | None = None) -> dict:
    """The specs of an add's two inputs, ``float_input`` left out (it stays unquantized). An input reached
    through value-preserving ops from a quantized tensor shares that tensor's scale (the option-A
    shortcut: slice + zero pad)."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    specs = {}
    for arg in node.args[:2]:
        if arg is float_input:
            continue
        origin = _value_preserving_origin(arg)
        shared = origin is not arg and _quantizes_output(origin)
        specs[arg] = SharedQuantizationSpec(origin) if shared else activation_spec
    return specs


def _annotate(node: Node, inputs: dict, output=None) -> None:
    """Add ``inputs`` (and ``output``) to the node's annotation, creating it on first use."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    existing = node.meta.get(ANNOTATION_KEY)
    if existing is not None:
        existing.input_qspec_map.update(inputs)
        if output is not None:
            existing.output_qspec = output
        return
    node.meta[ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=dict(inputs), output_qspec=output, _annotated=True)


def _quantizes_output(node: Node) -> bool:
    annotation = node.meta.get(ANNOTATION_KEY)
    return annotation is not None and annotation.output_qspec is not None


def is_tensor_add(node: Node) -> bool:
    """An add whose first two operands are both graph nodes (two tensors: a residual join), not a tensor and a number."""
    return len(node.args) >= 2 and all(isinstance(arg, Node) for arg in node.args[:2])


def _value_preserving_origin(node: Node) -> Node:
    """Walk up through value-preserving ops to the tensor whose values they carry."""
    while isinstance(node, Node) and node.op == "call_function" and node.target in VALUE_PRESERVING_OPS:
        if node.target in (_aten.pad.default, _aten.constant_pad_nd.default) and _pad_value(node) != 0:
            break
        node = node.args[0]
    return node


def _pad_value(node: Node) -> float:
    if node.target is _aten.constant_pad_nd.default:
        return float(node.args[2]) if len(node.args) > 2 else 0.0
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if mode != "constant":
        return float("nan")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    return 0.0 if value is None else float(value)


def _feeds_quantized(node: Node, quantized_compute: set) -> bool:
    """True when a quantized conv/linear or a residual add reads ``node`` (possibly through
    value-preserving ops): only then is quantizing its output useful."""
    for user in node.users:
        if user.op != "call_function":
            continue
        if user in quantized_compute or user.target in ADD_OPS:
            return True
        if user.target in VALUE_PRESERVING_OPS and _feeds_quantized(user, quantized_compute):
            return True
    return False
