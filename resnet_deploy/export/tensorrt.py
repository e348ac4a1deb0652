"""The former home of the TensorRT code, now ``resnet_deploy.tensorrt``; its names are re-exported so
that imports written against ``resnet_deploy.export.tensorrt`` keep working. Patch TensorRT or the GPU
in tests at ``resnet_deploy.tensorrt.runtime``, where every step looks them up."""

from ..onnx_file import INPUT_NAME, OUTPUT_NAME
from ..tensorrt import *  # noqa: F403 (the package's public names, listed once in its __all__)
from ..tensorrt import __all__ as _TENSORRT_NAMES

__all__ = ["INPUT_NAME", "OUTPUT_NAME", *_TENSORRT_NAMES]
