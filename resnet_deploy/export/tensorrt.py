"""The former home of the TensorRT code, now ``resnet_deploy.tensorrt``; these names are re-exported so
that imports written against ``resnet_deploy.export.tensorrt`` keep working. Patch TensorRT or the GPU
in tests at ``resnet_deploy.tensorrt.runtime``, where every step looks them up."""

from ..onnx_file import INPUT_NAME, OUTPUT_NAME
from ..tensorrt import (
    ENGINE_PRECISIONS,
    FLAVOUR_ENV,
    FLAVOURS,
    IMAGE_SHAPE,
    INSTALL_HINT,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    build_engine,
    check_engine,
    current_gpu,
    deserialize_engine,
    engine_layer_report,
    import_tensorrt,
    layer_report_path,
    network_layer_report,
    parse_compute_capability,
    read_sidecar,
    sidecar_path,
    tensorrt_available,
)

__all__ = [
    "ENGINE_PRECISIONS",
    "FLAVOURS",
    "FLAVOUR_ENV",
    "IMAGE_SHAPE",
    "INPUT_NAME",
    "INSTALL_HINT",
    "OUTPUT_NAME",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "build_engine",
    "check_engine",
    "current_gpu",
    "deserialize_engine",
    "engine_layer_report",
    "import_tensorrt",
    "layer_report_path",
    "network_layer_report",
    "parse_compute_capability",
    "read_sidecar",
    "sidecar_path",
    "tensorrt_available",
]
