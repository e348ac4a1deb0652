"""Reading every layer's output from each implementation, without changing what it computes.

* FP32: the checkpoint's model captured with torch.export (``quantize.capture.capture``, the graph PTQ
  starts from), run by a ``torch.fx.Interpreter`` that keeps the observed nodes' values.
* PyTorch int8: the artifact's program run by the export parity's exact interpreter (integer
  convolutions, float64 elsewhere: the int8 model without float32 emulation noise), keeping the
  observed quantize nodes' integers and their grid. It can also be *forced*: an observed node's value
  replaced, for the layers downstream, by another implementation's (its integers on its own grid, or
  float values re-quantized on the program's grid). Each layer then computes from exactly the inputs
  the other implementation had, so a difference at its output is that layer's own.
* ONNX Runtime: see :mod:`.ort_taps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx

from ..export.parity import _ExactInterpreter
from ..quantize.artifact import quant_ops
from .layers import Layer


@dataclass
class Observation:
    """A layer's output from one implementation: integers on a grid, or float values (``scale`` None)."""

    values: torch.Tensor
    scale: float | None = None
    zero_point: int = 0
    quant_range: tuple[int, int] | None = None

    def real(self) -> torch.Tensor:
        """The values as real numbers (float64)."""
        if self.scale is None:
            return self.values.to(torch.float64)
        return (self.values.to(torch.float64) - self.zero_point) * self.scale


def _is_quantize(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target in quant_ops()["quantize_per_tensor"]


def _is_dequantize(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target in quant_ops()["dequantize_per_tensor"]


# --------------------------------------------------------------------------------------------- FP32


class _Fp32Recorder(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, observe: set[str]) -> None:
        super().__init__(module)
        self.observe = observe
        self.observed: dict[str, Observation] = {}

    def run_node(self, n):
        value = super().run_node(n)
        if n.name in self.observe:
            self.observed[n.name] = Observation(value.detach())
        return value


def run_fp32(capture: torch.fx.GraphModule, layers: list[Layer], batch: torch.Tensor) -> dict[str, Observation]:
    """Layer name -> FP32 output on ``batch``."""
    recorder = _Fp32Recorder(capture, {layer.fp32_output for layer in layers})
    with torch.inference_mode():
        recorder.run(batch)
    return {layer.name: recorder.observed[layer.fp32_output] for layer in layers}


# --------------------------------------------------------------------------------------------- PyTorch int8


class _Int8Recorder(_ExactInterpreter):
    """The exact int8 interpreter, keeping observed values and replacing forced ones (module docstring)."""

    def __init__(self, module: torch.nn.Module, observe: set[str], forced: dict[str, Observation]) -> None:
        super().__init__(module)
        self.observe, self.forced = observe, forced
        self.observed: dict[str, Observation] = {}

    def run_node(self, n):
        value = super().run_node(n)
        if n.name in self.observe:
            self.observed[n.name] = self._observation(n, value)
        forced = self.forced.get(n.name)
        return value if forced is None else self._forced_value(n, forced)

    def fetch_args_kwargs_from_env(self, n):
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        source = n.args[0] if n.args else None
        forced = self.forced.get(source.name) if isinstance(source, torch.fx.Node) else None
        if forced is not None and forced.scale is not None and _is_dequantize(n):
            args = (args[0], forced.scale, forced.zero_point, *args[3:])  # read forced integers on their own grid
        return args, kwargs

    def _own_args(self, n) -> tuple:
        return super().fetch_args_kwargs_from_env(n)[0]

    def _observation(self, n, value) -> Observation:
        if not _is_quantize(n):
            return Observation(value.detach().to(torch.float64))
        args = self._own_args(n)
        return Observation(value.detach(), float(args[1]), int(args[2]), (int(args[3]), int(args[4])))

    def _forced_value(self, n, forced: Observation):
        if not _is_quantize(n):
            return forced.real()
        if forced.scale is None:  # float values: quantize them on this program's own grid
            args = self._own_args(n)
            return self.call_function(n.target, (forced.real(), *args[1:]), {})
        return forced.values


def run_int8(program: torch.nn.Module, layers: list[Layer], batch: torch.Tensor,
             forced: dict[str, Observation] | None = None) -> dict[str, Observation]:
    """Layer name -> the int8 program's output on ``batch``; ``forced`` (layer name -> observation)
    replaces those layers' outputs for everything downstream of them."""
    by_name = {layer.name: layer for layer in layers}
    forced_nodes = {by_name[name].program_output: obs for name, obs in (forced or {}).items()}
    recorder = _Int8Recorder(program, {layer.program_output for layer in layers}, forced_nodes)
    with torch.inference_mode():
        recorder.run(batch.to(torch.float64))
    return {layer.name: recorder.observed[layer.program_output] for layer in layers}
