"""The export stage: deployable ONNX files and TensorRT engines under ``exports/<run-name>/``, each
proven to compute what the PyTorch model computes, listed in ``manifest.json``.

Public API (other stages use only these):

* ``export_checkpoint(ExportOptions(...)) -> ExportReport``: the whole ``resnet-deploy export`` run.
* ``export_onnx(module, path, ExportInfo(...), dynamic_batch=True, static_batch=None, opset=18)``:
  one ONNX file (BN folded, simplified, checked, metadata props set).
* ``verify_onnx_file(path, expected_input="input", expected_output="logits") -> onnx.ModelProto``:
  onnx.checker full check + I/O names; UserError if bad.
* ``load_manifest(export_dir, verify_hashes=True) -> dict``: validated manifest, artifact paths made
  absolute, sha256 of every artifact checked.
* ``find_artifact(manifest, kind, precision, scheme=None)``.
* ``check_parity(onnx_path, reference, inputs, precision)``, ``fixed_batch(...)``, ``THRESHOLDS``.
* TensorRT (defined in ``resnet_deploy.tensorrt``, re-exported here): ``import_tensorrt() ->
  (module, flavour, version)``, ``build_engine(onnx_path, engine_path, *, precision, min_batch,
  opt_batch, max_batch, workspace_mb, opt_level, timing_cache, compute_capability=None) -> sidecar``,
  ``check_engine(engine_path, onnx_path=None) -> sidecar``, ``deserialize_engine(engine_path) ->
  ICudaEngine``, ``read_sidecar``, ``current_gpu()``.
"""

from ..tensorrt import (
    build_engine,
    check_engine,
    current_gpu,
    deserialize_engine,
    engine_layer_report,
    import_tensorrt,
    read_sidecar,
    tensorrt_available,
)
from .manifest import FORMAT as MANIFEST_FORMAT
from .manifest import find_artifact, load_manifest
from .onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportInfo,
    OnnxExport,
    export_onnx,
    fold_batchnorm,
    read_metadata,
    verify_onnx_file,
)
from .parity import THRESHOLDS, ParityInputs, check_parity, compare_logits, fixed_batch, onnx_session
from .run import ExportOptions, ExportReport, export_checkpoint

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MANIFEST_FORMAT",
    "OUTPUT_NAME",
    "THRESHOLDS",
    "ExportInfo",
    "ExportOptions",
    "ExportReport",
    "OnnxExport",
    "ParityInputs",
    "build_engine",
    "check_engine",
    "check_parity",
    "compare_logits",
    "current_gpu",
    "deserialize_engine",
    "engine_layer_report",
    "export_checkpoint",
    "export_onnx",
    "find_artifact",
    "fixed_batch",
    "fold_batchnorm",
    "import_tensorrt",
    "load_manifest",
    "onnx_session",
    "read_metadata",
    "read_sidecar",
    "tensorrt_available",
    "verify_onnx_file",
]
