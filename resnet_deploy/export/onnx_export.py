"""PyTorch -> ONNX: the torch.export-based exporter, BN folded, simplified, checked, with metadata.

Every ONNX file resnet-deploy writes has one float32 input ``input`` (N, 3, 32, 32), normalised with the
model's stored mean/std, and one float32 output ``logits`` (N, classes). FP16 files keep that float32
interface and cast at the edges (one Cast in, one out), so every runner feeds them the same arrays.

Why the steps are in this order:

1. BatchNorm is folded into the convolutions in PyTorch, in float32, before export (``fold_batchnorm``):
   the graph then has no BatchNormalization at all whatever the exporter version does, and FP16 weights
   are rounded once from the folded float32 values instead of folding already-rounded half values.
2. ``torch.onnx.export(..., dynamo=True)``: the exporter built on torch.export, which also handles the
   PT2E int8 models (their Q/DQ ops become QuantizeLinear/DequantizeLinear).
3. onnxsim (onnxslim when onnxsim is not installed) simplifies the graph; for Q/DQ graphs the number
   of Q/DQ nodes must not change (weight DequantizeLinear nodes are what makes TensorRT run int8).
4. ``cpu``-scheme int8 only: the classifier's float bias becomes DequantizeLinear(int32), exactly (it
   is on the int32 grid), so ONNX Runtime fuses the FC into QGemm (``qdq.int32_linear_biases``).
5. ``onnx.checker.check_model(full_check=True)`` (which includes strict shape inference) and our own
   checks: the I/O names, no training-only ops left.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, VerificationError
from ..fileio import atomic_path, sha256_file
from ..onnx_file import INPUT_NAME, METADATA_PREFIX, MODEL_PRECISIONS, OUTPUT_NAME, read_metadata, verify_onnx_file  # noqa: F401 - re-exported
from ..quantize_choices import TARGETS

# The lowest opset the torch.export-based exporter implements (it refuses to down-convert Pad to 17),
# and one TensorRT 10 / TensorRT-RTX and ONNX Runtime >= 1.14 all read.
DEFAULT_OPSET = 18
MIN_OPSET = 18
MAX_OPSET = 23
PRECISIONS = MODEL_PRECISIONS
INT8_SCHEMES = TARGETS  # an int8 file carries the Q/DQ scheme of the quantize target it came from
# Ops that only make sense while training, or that a folded inference graph must not contain.
TRAINING_ONLY_OPS = frozenset({"BatchNormalization", "Dropout", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"})
# Example batch used to trace: 2, because torch.export specialises a dimension of size 1.
TRACE_BATCH = 2


@dataclass
class ExportInfo:
    """What a model is, stored in the ONNX metadata props and in the manifest."""

    spec: dict
    normalization: dict
    classes: list[str]
    checkpoint_sha256: str
    precision: str = "fp32"
    scheme: str | None = None

    def metadata_props(self) -> dict[str, str]:
        """Key/value strings for ``ModelProto.metadata_props`` (JSON for anything that is not a string)."""
        props = {
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "input_layout": "NCHW float32, RGB 32x32, (pixel/255 - mean) / std",
            "normalization_mean": json.dumps(list(self.normalization["mean"])),
            "normalization_std": json.dumps(list(self.normalization["std"])),
            "classes": json.dumps(list(self.classes)),
            "model_spec": json.dumps(self.spec, sort_keys=True),
            "precision": self.precision,
            "scheme": self.scheme or "",
            "checkpoint_sha256": self.checkpoint_sha256,
        }
        return {METADATA_PREFIX + key: value for key, value in props.items()}


@dataclass
class OnnxExport:
    """The result of one ``export_onnx`` call."""

    path: Path
    precision: str
    scheme: str | None
    dynamic_batch: bool
    static_batch: int | None
    opset: int
    sha256: str
    simplifier: str | None
    export_seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


# --------------------------------------------------------------------------------------------- PyTorch side


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every Conv2d -> BatchNorm2d pair folded into one Conv2d.

    torch's own fx pass (``torch.fx.experimental.optimization.fuse``, folding with
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``). Works on any module torch.fx can trace; a BatchNorm
    whose input is not a convolution used only by it (or is a subclass: the pass matches exact types)
    is left alone, and the export check then reports it. ``model`` itself is not changed.
    """
    from torch.fx.experimental.optimization import fuse

    # The copy is put in eval mode first: fuse_conv_bn_eval folds running statistics, eval only.
    return fuse(copy.deepcopy(model).eval(), inplace=True).eval()


class HalfPrecisionModel(nn.Module):
    """Runs ``model`` in float16 behind a float32 interface: cast in, compute in half, cast out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def prepare_for_export(model: nn.Module, precision: str) -> nn.Module:
    """The float model as it will be exported: BN folded, and for fp16 wrapped in half precision."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"prepare_for_export handles fp32/fp16, not {precision}")
    folded = fold_batchnorm(model)
    return HalfPrecisionModel(folded).eval() if precision == "fp16" else folded


# --------------------------------------------------------------------------------------------- export


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(
            f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}",
            hint=f"{MIN_OPSET} is the lowest the torch.export-based exporter writes (it cannot express Pad in 17); "
            "TensorRT 10 and ONNX Runtime read it",
        )
    return opset


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress lines and warnings about its own internals; keep them off the console."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike,
    info: ExportInfo,
    *,
    dynamic_batch: bool = True,
    static_batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    prepared: bool = False,
) -> OnnxExport:
    """Export ``module`` to ONNX at ``path`` (atomically) and check the file.

    ``module``: for fp32/fp16 the PyTorch float model (BN is folded and fp16 applied here unless
    ``prepared``); for int8 the converted PT2E module from ``resnet_deploy.quantize`` (already Q/DQ).
    ``dynamic_batch``: a symbolic batch dimension (any size >= 1); otherwise the batch is fixed to
    ``static_batch``. The file gets ``info``'s metadata props. Raises VerificationError when the
    exported graph fails the checks (training-only ops left, wrong names), UserError for bad options.
    """
    _check_export_options(info, dynamic_batch, static_batch, opset)
    path = Path(path)
    start = time.perf_counter()
    if info.precision in ("fp32", "fp16") and not prepared:
        module = prepare_for_export(module, info.precision)
    model_proto = _run_exporter(module, info.precision, TRACE_BATCH if dynamic_batch else static_batch, dynamic_batch, opset)
    simplifier = None
    if simplify:
        model_proto, simplifier = simplify_model(model_proto, keep_qdq=info.precision == "int8")
    if info.precision == "int8" and info.scheme == "cpu":
        from .qdq import int32_linear_biases

        int32_linear_biases(model_proto)  # the FC then runs as one QGemm in ONNX Runtime
    _set_metadata(model_proto, info)
    checked = _save_checked(model_proto, path, info.precision)
    return OnnxExport(
        path=path,
        precision=info.precision,
        scheme=info.scheme,
        dynamic_batch=dynamic_batch,
        static_batch=None if dynamic_batch else static_batch,
        opset=_default_opset(checked),
        sha256=sha256_file(path),
        simplifier=simplifier,
        export_seconds=round(time.perf_counter() - start, 3),
        op_counts=dict(sorted(Counter(node.op_type for node in checked.graph.node).items())),
    )


def _check_export_options(info: ExportInfo, dynamic_batch: bool, static_batch: int | None, opset: int) -> None:
    check_opset(opset)
    if info.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {info.precision!r}")
    if info.precision == "int8" and info.scheme not in INT8_SCHEMES:
        raise UserError(f"int8 export needs a scheme ({', '.join(INT8_SCHEMES)}), got {info.scheme!r}")
    if not dynamic_batch and (static_batch is None or static_batch < 1):
        raise UserError("a static-shape export needs --static-batch N with N >= 1")


def _run_exporter(module: nn.Module, precision: str, example_batch: int, dynamic_batch: bool, opset: int):
    """torch.onnx.export (torch.export-based) of ``module`` on an example batch: the ModelProto."""
    example = torch.zeros(example_batch, 3, 32, 32)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises many kinds; all mean the same to the user
        raise VerificationError(f"ONNX export of the {precision} model failed: {str(exc).splitlines()[0]}") from exc
    return program.model_proto


def _save_checked(model_proto, path: Path, precision: str):
    """Write ``model_proto`` to ``path`` only if the saved file passes the checker and our graph checks;
    returns the checked ModelProto read back."""
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(model_proto, str(tmp))
        checked = verify_onnx_file(tmp)
        problems = graph_problems(checked, precision)
        if problems:
            raise VerificationError(f"exported {precision} ONNX graph fails checks: {'; '.join(problems)}")
    return checked


def simplify_model(model_proto, keep_qdq: bool = False):
    """Simplify with onnxsim, or onnxslim when onnxsim is not installed. Returns (model, tool name).

    With ``keep_qdq`` the QuantizeLinear/DequantizeLinear nodes must survive: a simplifier that folded
    ``DequantizeLinear(int8 weight)`` into a float weight would make TensorRT run that convolution in
    float. onnxsim and onnxslim both leave DQ nodes alone today; if a version does not, the
    simplification is redone without constant folding.
    """
    simplified, tool = _simplify(model_proto, fold_constants=True)
    if keep_qdq and _qdq_counts(simplified) != _qdq_counts(model_proto):
        simplified, tool = _simplify(model_proto, fold_constants=False)
        tool = f"{tool} (constant folding off: it removed Q/DQ nodes)" if tool else tool
    if keep_qdq and _qdq_counts(simplified) != _qdq_counts(model_proto):
        return model_proto, None
    return simplified, tool


def _qdq_counts(model_proto) -> tuple[int, int]:
    ops = Counter(node.op_type for node in model_proto.graph.node)
    return ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0)


def _simplify(model_proto, fold_constants: bool):
    try:
        import onnxsim
    except ImportError:
        onnxsim = None
    if onnxsim is not None:
        simplified, ok = onnxsim.simplify(model_proto, skip_constant_folding=not fold_constants)
        if not ok:
            raise VerificationError("onnxsim could not validate the simplified model against the original")
        return simplified, f"onnxsim {getattr(onnxsim, '__version__', '')}".strip()
    try:
        import onnxslim
    except ImportError:
        return model_proto, None
    slimmed = onnxslim.slim(model_proto, no_constant_folding=not fold_constants)
    return slimmed, f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()


def _set_metadata(model_proto, info: ExportInfo) -> None:
    props = info.metadata_props()
    kept = [p for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.doc_string = (
        f"resnet-deploy {info.spec.get('name', '')} {info.precision}"
        + (f" ({info.scheme} int8 scheme)" if info.scheme else "")
        + f": input '{INPUT_NAME}' float32 NCHW normalised, output '{OUTPUT_NAME}'"
    )


def _default_opset(model_proto) -> int:
    for entry in model_proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


# --------------------------------------------------------------------------------------------- checks


def graph_problems(model_proto, precision: str) -> list[str]:
    """What is wrong with an exported inference graph (empty when it is fine)."""
    problems = []
    ops = Counter(node.op_type for node in model_proto.graph.node)
    leftovers = sorted(op for op in ops if op in TRAINING_ONLY_OPS)
    if leftovers:
        problems.append(f"training-only / unfolded ops left: {', '.join(leftovers)}")
    for node in model_proto.graph.node:
        for attribute in node.attribute:
            if attribute.name == "training_mode" and attribute.i:
                problems.append(f"node {node.name or node.op_type} runs in training mode")
    if precision == "int8" and not (ops.get("QuantizeLinear") and ops.get("DequantizeLinear")):
        problems.append("int8 graph has no QuantizeLinear/DequantizeLinear pairs")
    return problems
