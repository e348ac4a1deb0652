"""The optional packages a stage imports where it uses them, each with the one message that says how
to install it (the extras of setup.cfg).

* ONNX Runtime is needed by export (its parity check), bench and inspect, but comes as two packages
  that both install the module ``onnxruntime``: ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` (CUDA
  and TensorRT execution providers). A hard requirement on ``onnxruntime`` would shadow the GPU
  build, so neither is required; the extras ``[cpu]`` and ``[gpu]`` install one.
* matplotlib draws the report's and inspect's plots (extra ``[plots]``); without it the reports are
  written without their plots, and a warning says so.
* torchao (PT2E int8) is required, pinned to the measured minor version;
  ``quantize.artifact.register_quant_ops`` names the pin when it is missing.
* jsonschema checks results files against ``schemas/results.schema.json`` (extra ``[schema]``, also
  in ``[dev]``); without it ``report.validate_results`` checks nothing, and an INFO message says so.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingDependencyError

ONNXRUNTIME_INSTALL = (
    'pip install "resnet-deploy[cpu]" (onnxruntime, CPU) or "resnet-deploy[gpu]" '
    "(onnxruntime-gpu, CUDA and TensorRT providers); one of the two, not both"
)
PLOTS_INSTALL = 'pip install "resnet-deploy[plots]" (matplotlib)'
SCHEMA_INSTALL = 'pip install "resnet-deploy[schema]" (jsonschema)'
# setup.cfg's pin: the torchao minor version the PT2E flow was measured with (its API moves between minors).
TORCHAO = "torchao>=0.18,<0.19"


def import_onnxruntime(purpose: str = "ONNX Runtime inference"):
    """The ``onnxruntime`` module, whichever of the two packages installed it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("ONNX Runtime (onnxruntime or onnxruntime-gpu)", ONNXRUNTIME_INSTALL, purpose) from exc
    return onnxruntime


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def has_jsonschema() -> bool:
    return importlib.util.find_spec("jsonschema") is not None


def import_pyplot(purpose: str = "plotting"):
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", PLOTS_INSTALL, purpose) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
