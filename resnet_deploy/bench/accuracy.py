"""Accuracy: the whole test split through a runner, top-1/top-5, and parity with the baseline row
(top-1 agreement and max/mean absolute logit difference, from :func:`resnet_deploy.compare.compare_logits`)."""

from __future__ import annotations

import numpy as np

from .. import progress
from ..backends.base import Runner, check_finite
from ..compare import compare_logits
from ..data import Normalization, normalized_batches
from ..signals import StopRequest
from .stopping import _check_stop


def predict(
    runner: Runner,
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int = 500,
    stop: StopRequest | None = None,
) -> np.ndarray:
    """Float32 logits of ``runner`` over uint8 NHWC ``images`` in order; NaN/inf raise with the batch.

    With ``stop``, a SIGINT/SIGTERM abandons the pass after the batch in progress (``_StopMeasuring``)."""
    if runner.max_batch_size is not None:
        batch_size = min(batch_size, runner.max_batch_size)
    outputs = []
    with progress.bar(f"{runner.name} accuracy", total=len(images)) as bar:
        for index, batch in enumerate(normalized_batches(images, normalization, batch_size)):
            _check_stop(stop)
            start = index * batch_size
            logits = runner.infer(batch)
            check_finite(logits, runner.name, f"accuracy pass, batch {index} of size {len(batch)} (images {start}..{start + len(batch) - 1})")
            outputs.append(logits)
            bar.advance(len(batch))
    return np.concatenate(outputs)


def parity_metrics(logits: np.ndarray, reference: np.ndarray) -> dict:
    """Agreement of top-1 predictions (percent) and absolute logit differences against ``reference``:
    :func:`~resnet_deploy.compare.compare_logits` under the keys a results row uses."""
    stats = compare_logits(reference, logits)
    return {"agreement": stats["top1_agreement"], "max_abs_diff": stats["max_abs_diff"], "mean_abs_diff": stats["mean_abs_diff"]}


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray, baseline_logits: np.ndarray | None, baseline: dict | None) -> dict:
    """classification_metrics plus deltas and parity against the baseline row."""
    import torch

    from ..evaluation import classification_metrics

    metrics = classification_metrics(torch.from_numpy(np.asarray(logits, dtype=np.float32)), labels)
    if baseline_logits is not None and baseline is not None:
        metrics["delta_top1"] = metrics["top1"] - baseline["top1"]
        metrics["delta_top5"] = metrics["top5"] - baseline["top5"]
        metrics.update(parity_metrics(logits, baseline_logits))
    else:
        metrics.update({"delta_top1": 0.0, "delta_top5": 0.0, "agreement": 100.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0})
    return metrics
