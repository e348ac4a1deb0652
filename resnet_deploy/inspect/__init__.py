"""``resnet-deploy inspect``: a layer-wise int8 debugger across PyTorch, ONNX Runtime and TensorRT, and
a Q/DQ lint that predicts from the ONNX graph alone what TensorRT will build.

Public API:

``inspect_int8(InspectOptions(...)) -> dict``
    run the debugger; writes ``inspect.json``, ``inspect.md`` and ``sqnr.png`` (see :mod:`.debugger`).
``lint_report(OnnxGraph(model_proto), onnx_path, compute_capability=None) -> dict``
    the Q/DQ lint, checked against TensorRT's builder where one builds here (see :mod:`.lint`).
``lint_before_engine_build(onnx_path) -> dict``
    what ``export`` records and prints before building an int8 engine.

Modules: :mod:`.graph` (ONNX graph view, the upstream walk), :mod:`.layers` (one name per layer
across implementations), :mod:`.taps` / :mod:`.ort_taps` / :mod:`.tensorrt_taps` (reading layer
outputs without changing what is computed), :mod:`.metrics`, :mod:`.diagnose`, :mod:`.results`,
:mod:`.render`.
"""

from .debugger import InspectOptions, inspect_int8
from .graph import OnnxGraph
from .lint import lint_before_engine_build, lint_report

__all__ = ["InspectOptions", "OnnxGraph", "inspect_int8", "lint_before_engine_build", "lint_report"]
