"""Parity: does an ONNX file compute what the PyTorch model computes? Checked with ONNX Runtime on CPU.

Thresholds (``THRESHOLDS``), measured on a fixed batch for float models and on a held-out set (test
images neither training nor calibration saw) for int8:

* fp32 ONNX vs PyTorch fp32: max |logit difference| < 1e-4 and top-1 agreement 100 %.
* fp16 ONNX (half weights and activations) vs PyTorch fp32: max |difference| at most 1 % of the largest
  reference logit, top-1 agreement >= 98 % (half precision moves logits by ~1e-3; a flip needs a
  near-tie between the two best classes).
* int8 ONNX vs the PyTorch int8 (Q/DQ reference) model: top-1 agreement >= 99.5 %. Logits are compared
  but not gated: one rounding step of a requantisation may land differently in an int8 kernel and in
  PyTorch's float emulation of it.

A check that fails is recorded with ``passed: false`` and the names of the failed criteria; the
export command then exits 1 naming them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import Normalization, normalize, to_tensor_images

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
    import onnxruntime as ort

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
        for start in range(0, len(inputs), batch_size):
            out = forward(inputs.tensor(start, start + batch_size))
            outputs.append(out.float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, dtype=np.float32))
    return np.concatenate(outputs)


def onnx_forward(session) -> Callable[[torch.Tensor], np.ndarray]:
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {input_name: batch.numpy()})[0]

    return forward


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max/mean |difference|, difference relative to the largest reference logit, top-1 agreement (%)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    scale = float(np.abs(reference).max()) or 1.0
    agree = reference.argmax(1) == candidate.argmax(1)
    return {
        "count": int(len(reference)),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(diff.max() / scale),
        "top1_agreement": float(100.0 * agree.mean()),
        "disagreements": int((~agree).sum()),
    }


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
) -> dict:
    """Run ``onnx_path`` with ONNX Runtime (CPU) and ``reference`` (PyTorch) on ``inputs``; compare.

    Returns the record stored in the manifest: the statistics, the thresholds, ``passed`` and
    ``failures`` (the failed criteria, empty when passed), plus accuracy of both against labels when
    ``inputs`` has labels.
    """
    thresholds = dict(THRESHOLDS[precision] if thresholds is None else thresholds)
    session = onnx_session(onnx_path, threads)
    candidate = run_in_batches(onnx_forward(session), inputs, batch_size)
    expected = run_in_batches(reference, inputs, batch_size)
    stats = compare_logits(expected, candidate)
    failures = judge(stats, thresholds)
    record = {
        "reference": "pytorch-int8-qdq" if precision == "int8" else "pytorch-fp32",
        "runtime": f"onnxruntime {_ort_version()} CPUExecutionProvider",
        "inputs": inputs.source,
        **stats,
        "thresholds": thresholds,
        "passed": not failures,
        "failures": failures,
    }
    if inputs.labels is not None:
        labels = np.asarray(inputs.labels)
        record["reference_top1"] = float(100.0 * (expected.argmax(1) == labels).mean())
        record["onnx_top1"] = float(100.0 * (candidate.argmax(1) == labels).mean())
    return record


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def describe_failure(artifact: str | Path, record: dict) -> str:
    return f"{artifact}: parity vs {record['reference']} failed on {record['count']} inputs ({'; '.join(record['failures'])})"
