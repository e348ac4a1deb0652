"""One name per layer, and where that layer is in every implementation.

A *layer* is what int8 deployment quantizes and fuses: each convolution, the FC and each residual Add,
plus ``input`` (the quantizer of the image). Its name is the PyTorch module path the export metadata of
the program records (``layers.1.0.conv2``, ``fc``; an Add is named after its block: ``layers.1.0.add``).

Each layer is *observed* where a deployment materialises its result: after the op, its folded
BatchNorm (FP32 graph only) and its ReLU, and, in the int8 graphs, after the QuantizeLinear that
follows (an int8 tensor). The int8 program and the FP32 graph are torch.export captures of the same
model, so they share module paths and are matched by name. The ONNX graph carries no module paths, so
its layers are matched to the program's by structure: same kind, same weight shape, and inputs from
layers already matched (graph order is topological in both), which needs no exporter naming
convention and refuses a graph that is not this program's.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..quantize.artifact import quant_ops
from ..quantize.quantizer import ADD_OPS, BN_OPS, CONV_OPS, LINEAR_OPS, RELU_OPS, is_tensor_add, layer_name
from .graph import GRAPH_INPUT, OnnxGraph, nearest_upstream

KINDS = ("input", "conv", "fc", "add")


@dataclass
class Layer:
    """One layer in every graph: the names that find it there."""

    name: str
    kind: str
    inputs: list[str]  # names of the layers it reads, in the order of its arguments
    program_node: str  # the op (or input placeholder) in the int8 program
    program_output: str  # node of the int8 program that is observed (a quantize node, or a float op)
    fp32_output: str  # node of the FP32 capture that is observed
    onnx_nodes: list[str] = field(default_factory=list)  # op [+ Relu] [+ QuantizeLinear]
    onnx_output: str = ""  # ONNX tensor observed

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": self.inputs,
            "pytorch": {"node": self.program_node, "output": self.program_output, "fp32_output": self.fp32_output},
            "onnx": {"nodes": self.onnx_nodes, "output": self.onnx_output},
        }


@dataclass
class _FxLayer:
    name: str
    kind: str
    node: torch.fx.Node
    output: torch.fx.Node
    inputs: list[str]
    weight_shape: tuple | None


# --------------------------------------------------------------------------------------------- torch.fx


def _fx_kind(node: torch.fx.Node) -> str | None:
    if node.op == "placeholder":
        return "input"
    if node.op != "call_function":
        return None
    if node.target in CONV_OPS:
        return "conv"
    if node.target in LINEAR_OPS:
        return "fc"
    if node.target in ADD_OPS and is_tensor_add(node):
        return "add"
    return None


def _fx_output_chain(node: torch.fx.Node) -> torch.fx.Node:
    """The node observed for layer ``node``: after its BatchNorm, ReLU and quantize, each taken only
    when it is the sole user (``getitem`` picks the output of a tuple-returning BatchNorm). Users that
    compute nothing (torch.export's input guard, a ``call_module``) do not count."""
    quantize = quant_ops()["quantize_per_tensor"]
    current = node
    for ops in (BN_OPS, {operator.getitem}, RELU_OPS, quantize):
        users = [user for user in current.users if user.op in ("call_function", "output")]
        if len(users) == 1 and users[0].op == "call_function" and users[0].target in ops:
            current = users[0]
    return current


def _fx_weight_shape(node: torch.fx.Node) -> tuple | None:
    if len(node.args) < 2 or not isinstance(node.args[1], torch.fx.Node):
        return None
    value = node.args[1].meta.get("val")
    return tuple(value.shape) if value is not None else None


def _fx_names(layer_nodes: list[torch.fx.Node]) -> dict[torch.fx.Node, str]:
    """Module paths; an Add is named after its block, and a repeated name gets a ``#2`` suffix."""
    names: dict[torch.fx.Node, str] = {}
    taken: dict[str, int] = {}
    for node in layer_nodes:
        kind = _fx_kind(node)
        base = GRAPH_INPUT if kind == "input" else layer_name(node)
        if kind == "add":
            base = f"{base}.add" if base else "add"
        taken[base] = taken.get(base, 0) + 1
        names[node] = base if taken[base] == 1 else f"{base}#{taken[base]}"
    return names


def fx_layers(graph_module: torch.fx.GraphModule) -> list[_FxLayer]:
    """The layers of a torch.export capture (FP32 or int8 program), in graph order."""
    nodes = list(graph_module.graph.nodes)
    first_input = next(n for n in nodes if n.op == "placeholder")
    layer_nodes = [n for n in nodes if _fx_kind(n) is not None and (n.op != "placeholder" or n is first_input)]
    names = _fx_names(layer_nodes)
    is_layer = names.__contains__
    layers = []
    for node in layer_nodes:
        inputs = [] if node.op == "placeholder" else nearest_upstream(node.all_input_nodes, lambda n: n.all_input_nodes, is_layer)
        layers.append(_FxLayer(names[node], _fx_kind(node), node, _fx_output_chain(node), [names[n] for n in inputs],
                               _fx_weight_shape(node)))
    return layers


# --------------------------------------------------------------------------------------------- ONNX


def _onnx_kind(node) -> str:
    return {"Conv": "conv", "Gemm": "fc", "MatMul": "fc", "Add": "add"}[node.op_type]


def _onnx_input_chain(graph: OnnxGraph) -> list:
    """The nodes that quantize the image: its QuantizeLinear, when the input's sole reader is one."""
    following = graph.sole_consumer(graph.inputs[0])
    return [following] if following is not None and following.op_type == "QuantizeLinear" else []


def match_onnx(graph: OnnxGraph, program_layers: list[_FxLayer]) -> dict[str, tuple[list[str], str]]:
    """Layer name -> (ONNX node names, observed ONNX tensor), matching by structure (module docstring)."""
    input_chain = _onnx_input_chain(graph)
    matched: dict[str, tuple[list[str], str]] = {
        GRAPH_INPUT: ([n.name for n in input_chain], input_chain[-1].output[0] if input_chain else graph.inputs[0])
    }
    name_of_tensor = {GRAPH_INPUT: GRAPH_INPUT}
    unmatched = [layer for layer in program_layers if layer.kind != "input"]
    for node in graph.layers():
        kind, shape = _onnx_kind(node), graph.weight_shape(node)
        wanted = sorted(name_of_tensor[t] for t in graph.upstream_layers(node))
        candidate = next(
            (layer for layer in unmatched
             if layer.kind == kind and sorted(layer.inputs) == wanted
             and (shape is None or layer.weight_shape is None or tuple(layer.weight_shape) == shape)),
            None,
        )
        if candidate is None:
            raise UserError(
                f"ONNX node {node.name} ({node.op_type} reading {', '.join(wanted)}) has no counterpart in the int8 program: "
                "the ONNX file was not exported from this quantize artifact",
                hint="pass the export made from this artifact (--export), or leave --export out to export it afresh",
            )
        unmatched.remove(candidate)
        name_of_tensor[node.output[0]] = candidate.name
        chain = graph.output_chain(node)
        matched[candidate.name] = ([n.name for n in chain], chain[-1].output[0])
    if unmatched:
        raise UserError(f"the ONNX graph lacks {len(unmatched)} layer(s) of the int8 program, e.g. {unmatched[0].name}")
    return matched


# --------------------------------------------------------------------------------------------- the map


def build_layer_map(program: torch.fx.GraphModule, fp32_capture: torch.fx.GraphModule, graph: OnnxGraph) -> list[Layer]:
    """Every layer of the int8 program with its FP32 and ONNX counterparts, in network order."""
    program_layers = fx_layers(program)
    fp32_by_name = {layer.name: layer for layer in fx_layers(fp32_capture)}
    missing = [layer.name for layer in program_layers if layer.name not in fp32_by_name]
    if missing:
        raise UserError(f"the FP32 checkpoint has no layer {missing[0]} of the int8 program: not the model it was quantized from")
    onnx = match_onnx(graph, program_layers)
    return [
        Layer(
            name=layer.name, kind=layer.kind, inputs=layer.inputs, program_node=layer.node.name,
            program_output=layer.output.name, fp32_output=fp32_by_name[layer.name].output.name,
            onnx_nodes=onnx[layer.name][0], onnx_output=onnx[layer.name][1],
        )
        for layer in program_layers
    ]
