"""The inspect record (``inspect.json``): per-layer figures, the two rankings, and the run's context.

``layers`` is in network order; each entry has ``name`` (the PyTorch module path), where the layer is
in the program, the ONNX graph and TensorRT (predicted by the lint; the engine's own layer when an
engine ran), ``sqnr_db`` per int8 implementation against FP32 (null: identical), and the full figures
(:class:`.metrics.Agreement`) of the four comparisons of :mod:`.debugger`.
"""

from __future__ import annotations

import math

import numpy as np

from ..quantize.calibration import DEFAULT_METHOD
from .diagnose import diagnose_divergence, quantization_advice
from .layers import Layer

FORMAT, VERSION = "resnet-deploy/inspect", 1
FP32, PYTORCH_INT8, ONNXRUNTIME, TENSORRT = "fp32", "pytorch-int8", "onnxruntime", "tensorrt"  # the implementations


def _sqnr_or_inf(summary: dict) -> float:
    return math.inf if summary["identical"] else (summary["sqnr_db"] if summary["sqnr_db"] is not None else -math.inf)


def _predicted_tensorrt_layer(layer: Layer, lint_rows: dict[str, dict]) -> dict:
    row = lint_rows.get(layer.onnx_nodes[0]) if layer.onnx_nodes else None
    if row is None:  # the image's QuantizeLinear: a layer of its own
        return {"onnx_nodes": layer.onnx_nodes, "precision": "int8", "fused_into": None}
    holder = lint_rows.get(row["fused_into"], row) if row["fused_into"] else row
    return {"onnx_nodes": holder["group"], "precision": row["precision"], "fused_into": row["fused_into"]}


def _layer_record(layer: Layer, tally, lint_rows: dict, engine_layers: dict) -> dict:
    vs_fp32 = {impl: stats[layer.name].summary() for impl, stats in tally.vs_fp32.items() if stats[layer.name].count}
    between = {f"{PYTORCH_INT8}~{impl}": {"propagated": tally.between[impl][layer.name].summary(),
                                           "local": tally.local[impl][layer.name].summary()}
               for impl in tally.between if tally.between[impl][layer.name].count}
    return {
        **layer.to_dict(),
        "tensorrt": {"predicted": _predicted_tensorrt_layer(layer, lint_rows), "engine": engine_layers.get(layer.name)},
        "sqnr_db": {impl: summary["sqnr_db"] for impl, summary in vs_fp32.items()},
        "vs_fp32": vs_fp32,
        "alone_vs_fp32": tally.alone[layer.name].summary(),
        "between": between,
    }


def loss_ranking(records: list[dict], layers: list[Layer], method: str, checkpoint: str, top: int) -> list[dict]:
    """Layers whose int8 computation alone loses most against FP32 (lowest isolated SQNR first)."""
    by_name = {layer.name: layer for layer in layers}
    ordered = sorted(records, key=lambda r: _sqnr_or_inf(r["alone_vs_fp32"]))
    return [{"name": r["name"], "kind": r["kind"], "sqnr_db_alone": r["alone_vs_fp32"]["sqnr_db"],
             "sqnr_db_in_network": r["sqnr_db"].get(PYTORCH_INT8), "clipped_fraction": r["alone_vs_fp32"]["clipped_fraction"],
             "suggestion": quantization_advice(by_name[r["name"]], r["alone_vs_fp32"], method, checkpoint)}
            for r in ordered[:top] if not r["alone_vs_fp32"]["identical"]]


def divergence_ranking(records: list[dict], layers: list[Layer], impl: str, graph, program, top: int) -> list[dict]:
    """Layers where ``impl`` and the int8 program disagree given the same int8 inputs (most first)."""
    key = f"{PYTORCH_INT8}~{impl}"
    by_name = {layer.name: layer for layer in layers}
    diverging = [r for r in records if key in r["between"] and r["between"][key]["local"]["mismatch_fraction"] > 0]
    diverging.sort(key=lambda r: (-r["between"][key]["local"]["mismatch_fraction"], _sqnr_or_inf(r["between"][key]["local"])))
    return [{"name": r["name"], "kind": r["kind"], **{f"local_{k}": r["between"][key]["local"][k]
                                                     for k in ("mismatch_fraction", "sqnr_db", "max_abs_error")},
             "diagnosis": diagnose_divergence(graph, program, by_name[r["name"]], impl)}
            for r in diverging[:top]]


def _top1(logits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    return {impl: float(100.0 * (values.argmax(1) == labels).mean()) for impl, values in logits.items()}


def build(*, options, loaded, quantized, onnx_path, onnx_sha256, source, inputs, layers, graph, status, tally, logits,
          batch_sizes, lint, seconds) -> dict:
    lint_rows = {row["node"]: row for row in lint["rows"]}
    engine_layers = status.get("tensorrt", {}).get("engine_layers", {})
    records = [_layer_record(layer, tally, lint_rows, engine_layers) for layer in layers]
    checkpoint = str(options.checkpoint)
    implementations = {
        FP32: {"ran": True, "what": "the checkpoint's model (torch.export capture, float32)"},
        PYTORCH_INT8: {"ran": True, "what": "the quantize artifact's program, evaluated exactly (integer convolutions)"},
        **{impl: {k: v for k, v in entry.items() if k != "engine_layers"} for impl, entry in status.items()},
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": quantized.spec.to_dict(),
        "checkpoint": {"path": checkpoint, "sha256": loaded.sha256},
        "int8": {"artifact_dir": str(options.int8_dir), "target": quantized.target, "method": quantized.method,
                 "residual_conv_input": quantized.residual_conv_input},
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha256, "source": source["source"]},
        "images": {"count": len(inputs), "source": inputs.source},
        "implementations": implementations,
        "top1": _top1(logits, np.asarray(inputs.labels)),
        "layers": records,
        "rankings": {
            "quantization_loss": loss_ranking(records, layers, quantized.method or DEFAULT_METHOD, checkpoint, options.top),
            "divergence": {impl: divergence_ranking(records, layers, impl, graph, quantized.module, options.top)
                           for impl in tally.between},
        },
        "batch_sizes": batch_sizes,
        "lint": lint,
        "seconds": round(seconds, 1),
    }
