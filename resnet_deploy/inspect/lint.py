"""Q/DQ lint: from the ONNX graph alone, what TensorRT will make of every Conv, Gemm and residual Add.

The rules are TensorRT's documented explicit-quantization rules (TensorRT developer guide, "Explicit
Quantization", sections "Q/DQ Fusion" and "Q/DQ Layer-Placement Recommendations":
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):

* a weighted layer runs in int8 when its activation input and its weight both come from
  DequantizeLinear; the DQs are fused into it, so are its bias, the ReLU after it and a QuantizeLinear
  on its output (then its output is int8, otherwise float);
* TensorRT's ONNX parser takes only int8 Q/DQ with zero-point 0 (by default), weights per tensor or per
  output channel, and no int32-bias DequantizeLinear (ONNX Runtime's own quantizer emits those);
* a residual Add fuses into the convolution that feeds it directly ("TensorRT can fuse element-wise
  addition following weighted layers"), the ReLU and QuantizeLinear after it too, when its other
  (residual) input comes from DequantizeLinear; the precision of that input decides the output's;
* an extra Q/DQ pair between the convolution and the Add "forces the separation of the convolution
  from the element-wise addition": the Add then runs as its own layer (int8 when both inputs come from
  DequantizeLinear and a QuantizeLinear follows it);
* an Add with an input that does not come from DequantizeLinear (a missing Q/DQ) runs in float.

Per-tensor weight scales are a warning, not a reason: TensorRT runs them in int8, at a cost in accuracy.

``compare_with_builder`` checks the prediction against TensorRT itself: always against the network
its ONNX parser builds (which layers read int8, here on the CPU too), and, on a GPU where the built
engine can be deserialised, against the engine inspector's fused layers and their precisions.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import VerificationError
from .graph import WEIGHTED_OPS, OnnxGraph

log = logging.getLogger(__name__)

DOC = "TensorRT developer guide, Explicit Quantization (Q/DQ Fusion; Q/DQ Layer-Placement Recommendations)"


@dataclass
class LintRow:
    """TensorRT's predicted treatment of one Conv, Gemm or residual Add."""

    node: str
    op: str
    layer: str | None  # the inspector's layer name, when the ONNX came with its int8 program
    precision: str  # "int8", "float" or "rejected" (the parser refuses the graph)
    reads_int8: bool  # every computed input comes from DequantizeLinear
    output: str = "float"  # "int8" when a QuantizeLinear is fused on its output
    group: list[str] = field(default_factory=list)  # ONNX nodes predicted to run as one TensorRT layer
    fused_into: str | None = None  # the node whose TensorRT layer absorbs this one
    blocked_by: list[str] = field(default_factory=list)  # a Q/DQ pair that prevents a fusion
    pattern: str = ""
    reasons: list[str] = field(default_factory=list)  # why not int8 (or why rejected)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- rules


def _integer_problems(graph: OnnxGraph, dequantize, what: str) -> list[str]:
    _, zero_point, _ = graph.qparams(dequantize)
    data = graph.values.get(dequantize.input[0])
    dtype = data.dtype if data is not None else (zero_point.dtype if zero_point is not None else np.dtype(np.uint8))
    problems = []
    if dtype != np.int8:
        problems.append(f"{what} {dequantize.name} is {dtype}: TensorRT's explicit quantization takes int8 only")
    if zero_point is not None and np.any(zero_point != 0):
        problems.append(f"{what} {dequantize.name} has a non-zero zero-point: TensorRT's ONNX parser rejects it (asymmetric quantization is off by default)")
    return problems


def _output_channel_axis(node) -> int:
    transposed = node.op_type == "MatMul" or (
        node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0)
    )
    return 1 if transposed else 0


def _weight_checks(graph: OnnxGraph, node, dequantize) -> tuple[list[str], list[str]]:
    problems = _integer_problems(graph, dequantize, "weight DequantizeLinear")
    scale, _, axis = graph.qparams(dequantize)
    warnings = []
    if scale is not None and scale.size > 1 and axis != _output_channel_axis(node):
        problems.append(f"weight scales are per channel on axis {axis}; TensorRT quantizes weights per output channel "
                        f"(axis {_output_channel_axis(node)})")
    if scale is not None and scale.size == 1:
        warnings.append("per-tensor weight scale: TensorRT runs it in int8, but one scale for every output channel costs "
                        "accuracy (quantize weights per channel)")
    return problems, warnings


def _weighted_row(graph: OnnxGraph, node) -> LintRow:
    row = LintRow(node.name, node.op_type, None, "float", False, group=[node.name])
    activation, weight = graph.dequantize_of(node.input[0]), graph.dequantize_of(node.input[1])
    rejected = []
    if activation is None:
        row.reasons.append(f"its input {node.input[0]} comes from {graph.op_of(node.input[0])}, not DequantizeLinear")
    else:
        rejected += _integer_problems(graph, activation, "input DequantizeLinear")
    if weight is None:
        row.reasons.append(f"its weight {node.input[1]} does not come from DequantizeLinear")
    else:
        problems, row.warnings = _weight_checks(graph, node, weight)
        rejected += problems
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias and graph.dequantize_of(bias) is not None:
        rejected.append(f"its bias comes from an int32 DequantizeLinear ({graph.dequantize_of(bias).name}): TensorRT's "
                        "parser rejects it (keep biases float; TensorRT folds them into the int8 kernel)")
    row.reads_int8 = activation is not None and weight is not None
    row.precision = "rejected" if rejected else ("int8" if row.reads_int8 else "float")
    row.reasons += rejected
    row.pattern = "+".join(["conv" if node.op_type == "Conv" else "gemm"] + (["bias"] if bias else []))
    _fuse_epilogue(graph, row, node.output[0])
    return row


def _fuse_epilogue(graph: OnnxGraph, row: LintRow, tensor: str) -> None:
    """Extend ``row``'s group with the ReLU and QuantizeLinear that follow ``tensor``."""
    following = graph.sole_consumer(tensor)
    if following is not None and following.op_type == "Relu":
        row.group.append(following.name)
        row.pattern += "+ReLU"
        following = graph.sole_consumer(following.output[0])
    if following is not None and following.op_type == "QuantizeLinear" and row.precision == "int8":
        row.group.append(following.name)
        row.output = "int8"
        row.pattern += " (int8 output)"


def _blocking_pair(graph: OnnxGraph, tensor: str) -> tuple[str, list[str]] | None:
    """(weighted node, [Q, DQ]) when ``tensor`` is DQ(Q(weighted op output)): a pair that keeps the op and
    this tensor's reader apart."""
    dequantize = graph.dequantize_of(tensor)
    quantize = graph.producer.get(dequantize.input[0]) if dequantize is not None else None
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return None
    source = graph.producer.get(quantize.input[0])
    if source is None or source.op_type not in WEIGHTED_OPS or graph.sole_consumer(source.output[0]) is not quantize:
        return None
    return source.name, [quantize.name, dequantize.name]


def _add_row(graph: OnnxGraph, node, rows: dict[str, LintRow]) -> LintRow:
    inputs = graph.computed_inputs(node)
    row = LintRow(node.name, "Add", None, "float", all(graph.dequantize_of(t) is not None for t in inputs), group=[node.name])
    direct = [t for t in inputs if graph.op_of(t) in WEIGHTED_OPS and graph.sole_consumer(t) is node
              and rows[graph.producer[t].name].precision == "int8"]
    if direct:
        _fuse_into_weighted(graph, row, node, rows[graph.producer[direct[0]].name], [t for t in inputs if t != direct[0]])
        return row
    float_inputs = [t for t in inputs if graph.dequantize_of(t) is None]
    for tensor in float_inputs:
        row.reasons.append(f"input {tensor} comes from {graph.op_of(tensor)}, not DequantizeLinear: a Q/DQ pair is missing "
                           "on this input, so TensorRT adds in float")
    for tensor in inputs:
        blocking = _blocking_pair(graph, tensor)
        if blocking is not None:
            row.blocked_by = blocking[1]
            row.warnings.append(
                f"a Q/DQ pair ({' -> '.join(blocking[1])}) sits between {blocking[0]} and this Add: TensorRT cannot fuse "
                f"conv + residual Add (+ReLU) across it and runs the Add as its own layer; quantize only the residual "
                f"input for the fused kernel ({DOC})")
            rows[blocking[0]].warnings.append(f"its output is re-quantized before residual Add {node.name}, which blocks "
                                              "the conv + residual Add fusion")
    row.precision = "int8" if not float_inputs else "float"
    row.pattern = "Add"
    _fuse_epilogue(graph, row, node.output[0])
    if row.precision == "int8" and row.output == "float":
        row.warnings.append("no QuantizeLinear follows it: TensorRT reads int8 inputs but writes the sum in float")
    return row


def _fuse_into_weighted(graph: OnnxGraph, row: LintRow, node, weighted: LintRow, residual: list[str]) -> None:
    row.fused_into = weighted.node
    row.precision = weighted.precision
    weighted.group.append(node.name)
    weighted.pattern += "+residual Add"
    if any(graph.dequantize_of(t) is None for t in residual):
        weighted.warnings.append(f"the residual input of {node.name} is float, so the fused output stays float ({DOC})")
        row.warnings.append("fused into the convolution with a float residual input: the output cannot be int8")
        return
    weighted.pattern = weighted.pattern.replace(" (int8 output)", "")
    weighted.output = "float"
    _fuse_epilogue(graph, weighted, node.output[0])
    row.pattern = f"fused into {weighted.node}"
    row.output = weighted.output


def lint_graph(graph: OnnxGraph, layer_names: dict[str, str] | None = None) -> list[LintRow]:
    """The prediction for every Conv, Gemm and residual Add, in graph order; ``layer_names`` maps ONNX
    node names to the inspector's layer names."""
    rows: dict[str, LintRow] = {}
    for node in graph.layers():
        rows[node.name] = _weighted_row(graph, node) if node.op_type in WEIGHTED_OPS else _add_row(graph, node, rows)
        rows[node.name].layer = (layer_names or {}).get(node.name)
    return list(rows.values())


def lint_onnx_file(path: str | os.PathLike, layer_names: dict[str, str] | None = None) -> list[LintRow]:
    import onnx

    return lint_graph(OnnxGraph(onnx.load(str(path))), layer_names)


def summarize(rows: list[LintRow]) -> dict:
    """Counts a manifest or a one-line message can carry."""
    by_op: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = by_op.setdefault(row.op, {})
        counts[row.precision] = counts.get(row.precision, 0) + 1
    return {
        "layers": len(rows),
        "by_op_and_precision": by_op,
        "fused_residual_adds": sum(1 for r in rows if r.fused_into),
        "fusions_blocked_by_qdq": sum(1 for r in rows if r.blocked_by),
        "not_int8": [{"node": r.node, "layer": r.layer, "precision": r.precision, "reasons": r.reasons}
                     for r in rows if r.precision != "int8"],
        "source": DOC,
    }


def describe(summary: dict) -> str:
    parts = [f"{op} " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items())) for op, counts in summary["by_op_and_precision"].items()]
    text = "; ".join(parts)
    if summary["fusions_blocked_by_qdq"]:
        text += f"; {summary['fusions_blocked_by_qdq']} conv+residual-Add fusion(s) blocked by a Q/DQ pair"
    return text


def lint_before_engine_build(onnx_path: str | os.PathLike) -> dict:
    """What ``export`` records (and prints) before it builds an int8 engine."""
    summary = summarize(lint_onnx_file(onnx_path))
    log.info(f"  Q/DQ lint (TensorRT's documented rules): {describe(summary)}")
    for entry in summary["not_int8"]:
        log.info(f"    {entry['node']}: {entry['precision']} ({'; '.join(entry['reasons'])})")
    return summary


# --------------------------------------------------------------------------------------------- the builder


def builder_layer_report(onnx_path: str | os.PathLike, compute_capability: str | None) -> dict:
    """Build an int8 engine from ``onnx_path`` in a temporary folder and return TensorRT's layer report
    (``resnet_deploy.tensorrt``'s: the parsed network, plus the engine inspector's view on a GPU), or
    ``{"parsed": False, "error": ...}`` when TensorRT refuses the graph."""
    from .. import tensorrt as trt_lib
    from ..fileio import read_json

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-lint-") as tmp:
        engine = Path(tmp) / "lint.engine"
        try:
            trt_lib.build_engine(onnx_path, engine, precision="int8", min_batch=1, opt_batch=1, max_batch=1,
                                 compute_capability=compute_capability)
        except VerificationError as exc:
            if not trt_lib.layer_report_path(engine).is_file():
                return {"parsed": False, "error": str(exc)}
        report = read_json(trt_lib.layer_report_path(engine), "TensorRT layer report")
    return {"parsed": True, **report}


def _network_reads_int8(report: dict) -> dict[str, bool]:
    """ONNX node -> does TensorRT's parsed network feed it only from Dequantize layers (weights included)?"""
    kinds = {"CONVOLUTION", "MATRIX_MULTIPLY", "ELEMENTWISE"}
    return {layer["name"]: all(i["from"] == "DEQUANTIZE" for i in layer["inputs"])
            for layer in report.get("layers", []) if layer["type"] in kinds}


def compare_with_builder(rows: list[LintRow], report: dict) -> dict:
    """Where lint and TensorRT agree on each layer's precision, and where not (with both answers)."""
    if not report.get("parsed"):
        predicted = any(row.precision == "rejected" for row in rows)
        return {"source": "ONNX parser", "agree": predicted, "disagreements": [] if predicted else
                [{"node": "(graph)", "lint": "accepted", "builder": report.get("error", "rejected")}]}
    inspector = report.get("engine_inspector")
    if isinstance(inspector, dict) and "Layers" in inspector:
        from .tensorrt_taps import engine_layers

        builder = {node: layer["precision"] for layer in engine_layers(inspector) for node in layer["onnx_nodes"]}
        source = "engine inspector (fused engine layers)"
        lint = {row.node: row.precision for row in rows}
    else:
        source, builder = "network definition (TensorRT's parsed network, before fusion)", _network_reads_int8(report)
        builder = {node: "int8" if reads else "float" for node, reads in builder.items()}
        lint = {row.node: "int8" if row.reads_int8 else "float" for row in rows}
    disagreements = [{"node": node, "lint": lint[node], "builder": builder.get(node, "absent")}
                     for node in lint if builder.get(node) != lint[node]]
    return {"source": source, "layers": len(lint), "agree": not disagreements, "disagreements": disagreements,
            "engine_inspector": "available" if inspector and "Layers" in (inspector or {}) else
            (inspector or {}).get("error", "needs the target GPU: the engine is deserialised to read its layers")}


def lint_report(graph: OnnxGraph, onnx_path: str | os.PathLike, compute_capability: str | None = None,
                layer_names: dict[str, str] | None = None) -> dict:
    """The lint's rows and summary, checked against TensorRT's builder where one can build here (a GPU,
    or TensorRT-RTX with ``compute_capability``); otherwise the reason it was not."""
    from ..tensorrt import runtime

    rows = lint_graph(graph, layer_names)
    record = {"rows": [row.to_dict() for row in rows], "summary": summarize(rows)}
    available, what = runtime.tensorrt_available()
    if not available:
        record["builder"] = {"ran": False, "reason": what}
    elif runtime.current_gpu() is None and not compute_capability:
        record["builder"] = {"ran": False, "reason": f"{what}: no GPU here; pass --compute-capability to build for one"}
    else:
        record["builder"] = {"ran": True, **compare_with_builder(rows, builder_layer_report(onnx_path, compute_capability))}
    return record
