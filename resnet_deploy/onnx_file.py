"""The conventions of resnet-deploy's ONNX files, for every stage that reads one (export, TensorRT,
backends): the I/O tensor names, the metadata props, and the check made before a file is used.

onnx only, no torch: ``export/onnx_export.py`` writes these files and re-exports these names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "resnet_deploy."
MODEL_PRECISIONS = ("fp32", "fp16", "int8")  # what an exported ONNX file or engine computes in


def verify_onnx_file(path: str | os.PathLike, expected_input: str = INPUT_NAME, expected_output: str = OUTPUT_NAME):
    """Load an ONNX file and check it: ``onnx.checker`` full check (strict shape inference included),
    one input and one output with the expected names. Returns the ModelProto; UserError if bad."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    try:
        model_proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX file (corrupt or truncated): {str(exc).splitlines()[0]}") from exc
    if not model_proto.graph.node:
        raise UserError(f"{path} is not a usable ONNX model: its graph has no nodes (corrupt or not ONNX)")
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"{path} fails the ONNX checker: {str(exc).strip().splitlines()[0]}") from exc
    inputs = [i.name for i in model_proto.graph.input if i.name not in {t.name for t in model_proto.graph.initializer}]
    outputs = [o.name for o in model_proto.graph.output]
    if inputs != [expected_input] or outputs != [expected_output]:
        raise UserError(
            f"{path} has inputs {inputs} and outputs {outputs}; expected ['{expected_input}'] and ['{expected_output}']"
        )
    return model_proto


def read_metadata(model_proto) -> dict[str, Any]:
    """The resnet-deploy metadata props of a model, JSON values decoded."""
    out: dict[str, Any] = {}
    for entry in model_proto.metadata_props:
        if not entry.key.startswith(METADATA_PREFIX):
            continue
        key = entry.key.removeprefix(METADATA_PREFIX)
        try:
            out[key] = json.loads(entry.value) if key in ("normalization_mean", "normalization_std", "classes", "model_spec") else entry.value
        except json.JSONDecodeError:
            out[key] = entry.value
    return out
