"""Real int8 execution of a converted PT2E model on x86 CPUs, for ``bench --backend pytorch --precision int8``.

The converted model is in Q/DQ reference form: float convolutions between quantize/dequantize ops,
which is exact but slower than FP32. ``torch.compile`` with Inductor's freezing pass pattern-matches
each ``dequantize -> conv/linear -> (add) -> (relu) -> quantize`` chain into oneDNN int8 kernels
(``onednn.qconv_pointwise``, ``qlinear_pointwise``): that is torchao's documented x86 lowering
(https://pytorch.org/tutorials/prototype/pt2e_quant_x86_inductor.html). U8S8 (``--target cpu``) is the
layout those kernels are built for. oneDNN's qconv takes only unsigned activations, so a TensorRT-scheme
model (signed int8, zero-point 0) is first rewritten to the same numbers in uint8: q_u8 = q_s8 + 128 with
zero-point 128 over [0, 255] rounds and clamps every value exactly as [-128, 127] with zero-point 0 does
(``signed_activations_to_unsigned``). ``lowering_report`` says how many int8 kernels Inductor fused.

Compilation is lazy (first call per input shape) and cached by Inductor on disk, so the first batch of
a benchmark is slow and is the warm-up.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch


def lower_for_cpu(module: torch.nn.Module, target: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable running ``module`` with oneDNN int8 kernels (Inductor, frozen weights)."""
    import torch._inductor.config as inductor_config

    register_x86_int8_patterns()
    module = signed_activations_to_unsigned(module)
    compiled = torch.compile(module)

    def run(x: torch.Tensor) -> torch.Tensor:
        # Freezing must be on while Dynamo traces (a first call, or a new shape), not only in
        # Inductor's options: otherwise weights stay graph inputs and oneDNN's prepack cannot fold.
        with torch.no_grad(), inductor_config.patch(freezing=True), warnings.catch_warnings():
            # Inductor's own oneDNN lowering copies a tensor with torch.tensor(tensor) and warns
            # about it at every compilation (one per batch size): torch's to fix, noise to a user.
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            return compiled(x)

    run.module = module  # type: ignore[attr-defined]
    run.target = target  # type: ignore[attr-defined]
    return run


def signed_activations_to_unsigned(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose per-tensor int8 activation Q/DQ ops (zero-point z, range [a, b]) are
    uint8 ops with zero-point z + 128 over [a + 128, b + 128]: the same dequantized values, in the
    layout x86 int8 kernels take. Weights (per-channel, signed) are unchanged."""
    import copy

    from .artifact import register_quant_ops

    register_quant_ops()
    ops = torch.ops.quantized_decomposed
    per_tensor = {ops.quantize_per_tensor.default, ops.dequantize_per_tensor.default}
    if not isinstance(module, torch.fx.GraphModule):
        return module
    nodes = [n for n in module.graph.nodes if n.op == "call_function" and n.target in per_tensor and n.args[5] == torch.int8]
    if not nodes:
        return module
    module = copy.deepcopy(module)
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in per_tensor or node.args[5] != torch.int8:
            continue
        source, scale, zero_point, qmin, qmax, _ = node.args[:6]
        if isinstance(zero_point, torch.fx.Node):
            raise ValueError("tensor zero-points are not produced by resnet-deploy's quantizer")
        node.args = (source, scale, int(zero_point) + 128, int(qmin) + 128, int(qmax) + 128, torch.uint8, *node.args[6:])
    module.recompile()
    return module


def register_x86_int8_patterns() -> None:
    """torchao registers its Inductor int8 patterns (qconv/qlinear weight prepack and post-op
    fusions) when its x86 quantizer module is imported; without them Inductor keeps float convs."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401


def lowering_report() -> dict:
    """How many int8 patterns Inductor fused so far in this process (oneDNN qconv/qlinear counts)."""
    from torch._dynamo.utils import counters

    return {key: value for key, value in counters["inductor"].items() if "qconv" in key or "qlinear" in key or "dequant" in key}
