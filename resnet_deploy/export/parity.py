"""Parity: does an ONNX file compute what the PyTorch model computes? Checked with ONNX Runtime on CPU.

Thresholds (``THRESHOLDS``), measured on a fixed batch for float models and on a held-out set (test
images neither training nor calibration saw) for int8:

* fp32 ONNX vs PyTorch fp32: max |logit difference| < 1e-4 and top-1 agreement 100 %.
* fp16 ONNX (half weights and activations) vs PyTorch fp32: max |difference| at most 1 % of the largest
  reference logit, top-1 agreement >= 98 % (half precision moves logits by ~1e-3; a flip needs a
  near-tie between the two best classes).
* int8 ONNX vs the PyTorch int8 (Q/DQ reference) model: top-1 agreement >= 99.5 %. The reference is
  the quantize stage's model evaluated exactly (``ExactQDQReference``: integer convolutions, float64
  elsewhere), because its usual float32 emulation adds rounding noise of its own; agreement with the
  float32 emulation is recorded beside it (``compared_with``). Logits are compared but not gated: one
  rounding step of a requantisation may land differently in an int8 kernel.

A check that fails is recorded with ``passed: false`` and the names of the failed criteria; the
export command then exits 1 naming them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.fx

from ..compare import compare_logits  # defined there, once; export/__init__ and inspect/ import it from here
from ..data import Normalization, normalize, normalized_batches, to_tensor_images
from ..optional import import_onnxruntime

THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_diff": 1e-4, "top1_agreement": 100.0},
    "fp16": {"max_rel_diff": 1e-2, "top1_agreement": 98.0},
    "int8": {"top1_agreement": 99.5},
}
FIXED_BATCH_SIZE = 64
FIXED_BATCH_SEED = 2016


@dataclass
class ParityInputs:
    """Normalised float32 NCHW inputs and where they came from (for the record)."""

    images: np.ndarray  # uint8 NHWC
    normalization: Normalization
    source: str
    labels: np.ndarray | None = None

    def tensor(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return normalize(to_tensor_images(self.images[start:stop]), self.normalization)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The inputs in order, ``batch_size`` at a time (the last batch may be shorter)."""
        return normalized_batches(self.images, self.normalization, batch_size)

    def __len__(self) -> int:
        return len(self.images)


def fixed_batch(normalization: Normalization, size: int = FIXED_BATCH_SIZE, images: np.ndarray | None = None,
                source: str | None = None) -> ParityInputs:
    """The fixed batch float parity uses: the first ``size`` of ``images`` (real test images when the
    caller has a dataset), else ``size`` seeded random images (same every run)."""
    if images is not None and len(images):
        return ParityInputs(np.ascontiguousarray(images[:size]), normalization, source or "test images")
    rng = np.random.default_rng(FIXED_BATCH_SEED)
    noise = rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8)
    return ParityInputs(noise, normalization, f"seeded random images (seed {FIXED_BATCH_SEED})")


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations (the fusions deployment gets)."""
    ort = import_onnxruntime("checking an ONNX export against PyTorch")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_in_batches(forward: Callable[[torch.Tensor], np.ndarray | torch.Tensor], inputs: ParityInputs,
                   batch_size: int = 256) -> np.ndarray:
    outputs = []
    with torch.inference_mode():
        for batch in inputs.batches(batch_size):
            out = forward(batch)
            outputs.append(out.float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32))
    return np.concatenate(outputs)


def onnx_forward(session) -> Callable[[torch.Tensor], np.ndarray]:
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {input_name: batch.numpy()})[0]

    return forward


def judge(stats: dict, thresholds: dict[str, float]) -> list[str]:
    """Names of the failed criteria, e.g. ['max_abs_diff 3.1e-03 >= 1e-04']."""
    failures = []
    for key, limit in thresholds.items():
        value = stats[key]
        if key == "top1_agreement":
            if value < limit:
                failures.append(f"top1_agreement {value:.2f}% < {limit}%")
        elif not value < limit:
            failures.append(f"{key} {value:.3g} >= {limit:g}")
    return failures


def check_parity(
    onnx_path: str | os.PathLike,
    reference: Callable[[torch.Tensor], torch.Tensor],
    inputs: ParityInputs,
    precision: str,
    *,
    thresholds: dict[str, float] | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    reference_name: str | None = None,
    also_compare: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict:
    """Run ``onnx_path`` with ONNX Runtime (CPU) and ``reference`` (PyTorch) on ``inputs``; compare.

    Returns the record stored in the manifest: the statistics, the thresholds, ``passed`` and
    ``failures`` (the failed criteria, empty when passed), plus accuracy of both against labels when
    ``inputs`` has labels. ``also_compare``: further references, reported (not gated) under
    ``compared_with[name]``, each against the ONNX output and against the gating reference.
    """
    thresholds = dict(THRESHOLDS[precision] if thresholds is None else thresholds)
    session = onnx_session(onnx_path, threads)
    candidate = run_in_batches(onnx_forward(session), inputs, batch_size)
    expected = run_in_batches(reference, inputs, batch_size)
    stats = compare_logits(expected, candidate)
    failures = judge(stats, thresholds)
    record = {
        "reference": reference_name or ("pytorch-int8-qdq" if precision == "int8" else "pytorch-fp32"),
        "runtime": f"onnxruntime {_ort_version()} CPUExecutionProvider",
        "inputs": inputs.source,
        **stats,
        "thresholds": thresholds,
        "passed": not failures,
        "failures": failures,
    }
    if also_compare:
        record["compared_with"] = {}
        for name, other in also_compare.items():
            other_logits = run_in_batches(other, inputs, batch_size)
            versus_onnx = compare_logits(other_logits, candidate)
            versus_reference = compare_logits(expected, other_logits)
            record["compared_with"][name] = {
                "onnx_top1_agreement": versus_onnx["top1_agreement"],
                "onnx_max_abs_diff": versus_onnx["max_abs_diff"],
                "reference_top1_agreement": versus_reference["top1_agreement"],
                "reference_max_abs_diff": versus_reference["max_abs_diff"],
            }
    if inputs.labels is not None:
        labels = np.asarray(inputs.labels)
        record["reference_top1"] = float(100.0 * (expected.argmax(1) == labels).mean())
        record["onnx_top1"] = float(100.0 * (candidate.argmax(1) == labels).mean())
    return record


class ExactQDQReference:
    """The PyTorch int8 (Q/DQ) model evaluated exactly: the integer arithmetic int8 kernels perform.

    Why: the Q/DQ reference emulates int8 in float32. A 3x3x64 convolution sums 576 scaled products,
    and float32 summation in another order (oneDNN, MLAS, an int32 kernel) moves the result by ~1e-6,
    which now and then puts a value on the other side of a rounding boundary in the next
    QuantizeLinear. Each such 1-LSB flip spreads through the following layers, so two float32
    emulations of one int8 model disagree on top-1 for up to ~1 % of the images of a weakly trained
    network; that noise is not a property of the int8 model.

    Here every convolution / linear layer whose input and weight come from DequantizeLinear is computed
    on the integer values, ``sum((x_q - zx) * (w_q - zw))``, in float32, which is exact while every
    partial sum stays below 2**24 (checked per layer with a bound; float64 otherwise), then scaled by
    ``sx * sw`` and biased in float64. Dequantize, requantize and everything between run in float64.
    Same graph, same scales, same weights: only the rounding noise of the emulation is gone.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _ExactInterpreter(self.module).run(x.to(torch.float64)).float()


_EXACT_FLOAT32_LIMIT = float(2**24)


class _ExactInterpreter(torch.fx.Interpreter):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.dequantized_from: dict[torch.fx.Node, tuple] = {}  # DQ node -> (int tensor, scale, zero point)

    def run_node(self, n):
        if n.op == "call_function" and str(n.target) in ("aten.conv2d.default", "aten.linear.default"):
            exact = self._integer_layer(n)
            if exact is not None:
                return exact
        if n.op == "call_function" and str(n.target).startswith("quantized_decomposed.dequantize_per"):
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.dequantized_from[n] = tuple(args[:3])  # the int values, kept for the integer convolution
        return super().run_node(n)

    def _integer_layer(self, n):
        source, weight = n.args[0], n.args[1]
        if not (isinstance(source, torch.fx.Node) and isinstance(weight, torch.fx.Node)):
            return None
        if not (str(source.target).startswith("quantized_decomposed.dequantize_per_tensor")
                and str(weight.target).startswith("quantized_decomposed.dequantize_per")):
            return None
        if source not in self.dequantized_from or weight not in self.dequantized_from:
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x_q, sx, zx = self.dequantized_from[source]
        w_q, sw, zw = self.dequantized_from[weight]
        x_int = x_q.to(torch.float32) - float(zx)
        per_channel = str(weight.target).startswith("quantized_decomposed.dequantize_per_channel")
        if per_channel:
            if weight.args[3] != 0:
                return None
            shape = [-1] + [1] * (w_q.dim() - 1)
            w_int = w_q.to(torch.float32) - torch.as_tensor(zw, dtype=torch.float32).view(shape)
            scale = float(sx) * torch.as_tensor(sw, dtype=torch.float64)
        else:
            w_int = w_q.to(torch.float32) - float(zw)
            scale = torch.tensor(float(sx) * float(sw), dtype=torch.float64)
        rest = list(args[3:])
        op = torch.ops.aten.conv2d.default if str(n.target) == "aten.conv2d.default" else torch.ops.aten.linear.default
        accumulated = op(x_int, w_int, None, *rest)
        bound = op(x_int.abs(), w_int.abs(), None, *rest)
        if bound.max().item() >= _EXACT_FLOAT32_LIMIT:  # float32 would round: use float64 (slower, exact to ~1e-16)
            accumulated = op(x_int.double(), w_int.double(), None, *rest)
        channel_shape = [1, -1] + [1] * (accumulated.dim() - 2)
        out = accumulated.to(torch.float64) * scale.view(channel_shape if scale.dim() else [])
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if bias is not None:
            out = out + bias.to(torch.float64).view(channel_shape)
        return out

    def call_function(self, target, args, kwargs):
        name = str(target)
        if name.startswith("quantized_decomposed.dequantize_per_tensor"):
            x, scale, zero_point = args[:3]
            return (x.to(torch.float64) - float(zero_point)) * float(scale)
        if name.startswith("quantized_decomposed.dequantize_per_channel"):
            x, scales, zero_points, axis = args[:4]
            shape = [1] * x.dim()
            shape[axis] = -1
            zp = zero_points.to(torch.float64).view(shape) if zero_points is not None else 0.0
            return (x.to(torch.float64) - zp) * scales.to(torch.float64).view(shape)
        if name.startswith("quantized_decomposed.quantize_per_tensor"):
            x, scale, zero_point, quant_min, quant_max, dtype = args[:6]
            q = torch.round(x.to(torch.float64) / float(scale)) + float(zero_point)  # ONNX: round half to even
            return q.clamp(quant_min, quant_max).to(dtype)
        if name.startswith("quantized_decomposed.quantize_per_channel"):
            x, scales, zero_points, axis, quant_min, quant_max, dtype = args[:7]
            shape = [1] * x.dim()
            shape[axis] = -1
            q = torch.round(x.to(torch.float64) / scales.to(torch.float64).view(shape)) + zero_points.to(torch.float64).view(shape)
            return q.clamp(quant_min, quant_max).to(dtype)
        if name.startswith("quantized_decomposed."):
            raise NotImplementedError(f"exact reference does not implement {name}")
        return super().call_function(target, _promote(args), _promote(kwargs))


def _promote(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return value.to(torch.float64)
    if isinstance(value, (list, tuple)):
        return type(value)(_promote(v) for v in value)
    if isinstance(value, dict):
        return {k: _promote(v) for k, v in value.items()}
    return value


def _ort_version() -> str:
    return import_onnxruntime("checking an ONNX export against PyTorch").__version__


def describe_failure(artifact: str | Path, record: dict) -> str:
    return f"{artifact}: parity vs {record['reference']} failed on {record['count']} inputs ({'; '.join(record['failures'])})"
