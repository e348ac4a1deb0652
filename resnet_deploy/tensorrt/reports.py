"""Layer reports: the parsed network's layer types and dtypes (no GPU needed), and the built engine's
own view through the engine inspector (fused layers and their precisions; needs the target GPU)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from . import runtime


def _kind(value) -> str:
    return str(value).rsplit(".", 1)[-1]


def _layer_entry(layer, producers: dict[str, Any]) -> dict:
    """One layer: type, input dtypes and producing layer types, output dtypes, and for a convolution or
    matrix multiply whether TensorRT will fuse it into an int8 kernel (both inputs from DequantizeLinear)."""
    kind = _kind(layer.type)
    inputs = []
    for i in range(layer.num_inputs):
        tensor = layer.get_input(i)
        if tensor is None:
            continue
        source = producers.get(tensor.name)
        inputs.append({"dtype": _kind(tensor.dtype), "from": _kind(source.type) if source else "input"})
    outputs = [_kind(layer.get_output(i).dtype) for i in range(layer.num_outputs)]
    entry = {"name": layer.name, "type": kind, "inputs": inputs, "outputs": outputs}
    if kind in ("CONVOLUTION", "MATRIX_MULTIPLY"):
        dq_inputs = [inp for inp in inputs if inp["from"] == "DEQUANTIZE"]
        entry["quantized"] = len(dq_inputs) >= 2 or (kind == "CONVOLUTION" and len(dq_inputs) >= 1 and len(inputs) == 1)
    return entry


def network_layer_report(trt, network) -> dict:
    """Per-layer types of the parsed (strongly typed) network, before TensorRT fuses anything.

    A convolution whose activation and weight inputs both come from DequantizeLinear is counted as
    quantized: in explicit quantization TensorRT fuses exactly that pattern into an int8 kernel. This
    report needs no GPU; ``engine_layer_report`` gives the built engine's own view when one is present.
    """
    all_layers = [network.get_layer(index) for index in range(network.num_layers)]
    producers = {layer.get_output(out).name: layer for layer in all_layers for out in range(layer.num_outputs)}
    layers = [_layer_entry(layer, producers) for layer in all_layers]
    convolutions = [layer for layer in layers if layer["type"] == "CONVOLUTION"]
    by_type = Counter(f"{layer['type']}:{layer['outputs'][0] if layer['outputs'] else '-'}" for layer in layers)
    return {
        "source": "network definition (before fusion)",
        "summary": {
            "layers": len(layers),
            "convolutions": len(convolutions),
            "quantized_convolutions": sum(bool(layer["quantized"]) for layer in convolutions),
            "quantize_layers": sum(1 for layer in layers if layer["type"] == "QUANTIZE"),
            "dequantize_layers": sum(1 for layer in layers if layer["type"] == "DEQUANTIZE"),
            "by_type_and_output_dtype": dict(sorted(by_type.items())),
        },
        "layers": layers,
    }


def inspect_built_engine(trt, logger, plan: bytes) -> dict:
    """On the target GPU: the engine inspector's per-layer view (fused layers and their precisions)."""
    try:
        trt_runtime = trt.Runtime(logger)  # must outlive the engine it deserialises
        engine = trt_runtime.deserialize_cuda_engine(plan)
        if engine is None:
            return {"error": " | ".join(logger.errors()[:3]) or "deserialization failed"}
        return engine_layer_report(engine, trt)
    except Exception as exc:  # the report is informative; a failure here must not lose the engine
        return {"error": f"{type(exc).__name__}: {exc}"}


def engine_layer_report(engine, trt=None) -> dict:
    """The built engine's own layer list (fused layers, chosen precisions, tactics) via the engine
    inspector. Needs a deserialised engine, so a GPU."""
    trt = trt or runtime.import_tensorrt()[0]
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
