"""TensorRT in one place: which TensorRT and GPU, the engine build as small loaders, the sidecar, and
the checks before an engine is loaded. The export stage builds engines with it, the TensorRT runner
(``backends/tensorrt.py``) and the inspect stage load them with it.

Written against the TensorRT Python API, and usable with either flavour:

* full TensorRT (``import tensorrt``; ``pip install tensorrt`` from NVIDIA): builds for the GPU it
  runs on. Preferred when both are installed.
* TensorRT-RTX (``import tensorrt_rtx_bindings``; ``pip install "resnet-deploy[tensorrt]"``): the same
  API, builds without a GPU for a named compute capability (``config.set_compute_capability``), and
  compiles kernels when the engine is first run (so building takes well under a second and has no
  timing cache: timing cache calls are no-ops there).

Modules, in the order a build uses them:

* ``runtime``: ``import_tensorrt() -> (module, flavour, version)``, ``tensorrt_available``,
  ``current_gpu``, ``parse_compute_capability``, the collecting logger. Fake TensorRT or the GPU in
  a test by patching this module: every other step looks these up through it.
* ``settings``: ``BuildSettings`` and ``BatchRange``, validated once on construction.
* ``loader``: ``network_from_onnx`` -> ``create_config`` (+ ``add_profile``, timing cache) ->
  ``engine_bytes`` -> ``engine_from_bytes`` (polygraphy's loader seams).
* ``reports``: the parsed network's layer report and the engine inspector's.
* ``sidecar``: the ``X.engine.json`` format, ``read_sidecar``, ``check_engine``.
* ``engines``: ``build_engine`` (the loaders composed, files written) and ``deserialize_engine``.
"""

from .engines import build_engine, build_engine_file, deserialize_engine, resolve_target
from .reports import engine_layer_report, network_layer_report
from .runtime import (
    FLAVOUR_ENV,
    FLAVOURS,
    INSTALL_HINT,
    current_gpu,
    import_tensorrt,
    make_logger,
    parse_compute_capability,
    tensorrt_available,
)
from .settings import ENGINE_PRECISIONS, IMAGE_SHAPE, BatchRange, BuildSettings, check_batches
from .sidecar import SIDECAR_FORMAT, SIDECAR_VERSION, check_engine, layer_report_path, read_sidecar, sidecar_path

__all__ = [
    "ENGINE_PRECISIONS",
    "FLAVOURS",
    "FLAVOUR_ENV",
    "IMAGE_SHAPE",
    "INSTALL_HINT",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "BatchRange",
    "BuildSettings",
    "build_engine",
    "build_engine_file",
    "check_batches",
    "check_engine",
    "current_gpu",
    "deserialize_engine",
    "engine_layer_report",
    "import_tensorrt",
    "layer_report_path",
    "make_logger",
    "network_layer_report",
    "parse_compute_capability",
    "read_sidecar",
    "resolve_target",
    "sidecar_path",
    "tensorrt_available",
]
