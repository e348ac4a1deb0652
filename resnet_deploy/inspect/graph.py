"""A read-only view of an int8 Q/DQ ONNX graph, and the one upstream walk the inspector and the lint share.

``OnnxGraph`` answers the questions both ask of a graph: which node produces a tensor, which nodes read
it, which tensors are constants (their values come from :func:`..export.qdq.graph_constants`, the project's
one reader of initializers and Constant nodes), and which nodes are *layers*: weighted ops (Conv, Gemm,
MatMul) and residual Adds (an Add of two computed tensors; an Add of a constant is a bias).

``nearest_upstream`` is written once for any graph (ONNX here, torch.fx in :mod:`.layers`): from a set
of tensors, walk back through everything that is not a layer and return the layers reached.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable, Iterable

import numpy as np

from ..export.qdq import graph_constants

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
GRAPH_INPUT = "input"  # the name the inspector gives the network input (the image), in every graph


def nearest_upstream(starts: Iterable[Hashable], inputs_of: Callable, is_layer: Callable) -> list:
    """The layers nearest upstream of ``starts`` (in the order first reached): a depth-first walk
    back through ``inputs_of`` that stops at every item ``is_layer`` accepts."""
    found, seen, stack = [], set(), list(starts)[::-1]
    while stack:
        item = stack.pop()
        if item in seen:
            continue
        seen.add(item)
        if is_layer(item):
            found.append(item)
        else:
            stack.extend(list(inputs_of(item))[::-1])
    return found


class OnnxGraph:
    """Producers, consumers and constants of one ONNX model (which it never modifies)."""

    def __init__(self, model_proto) -> None:
        self.model = model_proto
        self.nodes = list(model_proto.graph.node)
        self.values: dict[str, np.ndarray] = graph_constants(model_proto)
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        initializers = {init.name for init in model_proto.graph.initializer}
        self.inputs = [i.name for i in model_proto.graph.input if i.name not in initializers]
        self.outputs = [o.name for o in model_proto.graph.output]

    # ------------------------------------------------------------------ tensors

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.values

    def computed_inputs(self, node) -> list[str]:
        """The inputs of ``node`` that are computed at run time (not weights, scales or zero-points)."""
        return [name for name in node.input if name and not self.is_constant(name)]

    def op_of(self, tensor: str) -> str:
        """The op type that produces ``tensor`` ("graph input" for the network input)."""
        node = self.producer.get(tensor)
        return node.op_type if node is not None else "graph input"

    def dequantize_of(self, tensor: str):
        """The DequantizeLinear node that produces ``tensor``, or None."""
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def sole_consumer(self, tensor: str):
        """The one node that reads ``tensor``, or None when it has several readers or is a graph output
        (then every reader needs it materialised, and nothing can be fused past it)."""
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def qparams(self, node) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        """(scale, zero_point, axis) of a QuantizeLinear/DequantizeLinear node; a missing zero-point is None."""
        scale = self.values.get(node.input[1])
        zero_point = self.values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        return scale, zero_point, axis

    # ------------------------------------------------------------------ layers

    def is_layer(self, node) -> bool:
        if node.op_type in WEIGHTED_OPS:
            return True
        return node.op_type == "Add" and len(self.computed_inputs(node)) == 2

    def layers(self) -> list:
        """Weighted ops and residual Adds, in graph (topological) order."""
        return [node for node in self.nodes if self.is_layer(node)]

    def upstream_layers(self, node) -> list[str]:
        """Output tensors of the layers nearest upstream of ``node`` (GRAPH_INPUT for the image)."""

        def is_layer(tensor: str) -> bool:
            producer = self.producer.get(tensor)
            return tensor in self.inputs or (producer is not None and self.is_layer(producer))

        def inputs_of(tensor: str) -> list[str]:
            producer = self.producer.get(tensor)
            return self.computed_inputs(producer) if producer is not None else []

        found = nearest_upstream(self.computed_inputs(node), inputs_of, is_layer)
        return [GRAPH_INPUT if tensor in self.inputs else tensor for tensor in found]

    def output_chain(self, first) -> list:
        """``first`` and what follows it before its result is materialised: a ReLU, then a
        QuantizeLinear, each only when it is the sole reader. The last node's output is the tensor a
        deployment writes (an int8 tensor when the chain ends in QuantizeLinear)."""
        chain = [first]
        for op in ("Relu", "QuantizeLinear"):
            following = self.sole_consumer(chain[-1].output[0])
            if following is not None and following.op_type == op:
                chain.append(following)
        return chain

    def weight_shape(self, node) -> tuple[int, ...] | None:
        """The weight's shape as (out, in, ...), read through a DequantizeLinear, or None when unknown."""
        if node.op_type not in WEIGHTED_OPS:
            return None
        tensor = node.input[1]
        dequantize = self.dequantize_of(tensor)
        value = self.values.get(dequantize.input[0] if dequantize is not None else tensor)
        if value is None:
            return None
        transposed = node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0)
        )
        return tuple(reversed(value.shape)) if transposed else tuple(value.shape)
