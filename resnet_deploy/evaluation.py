"""Accuracy of any callable model on uint8 images: the one definition every stage reports with.

torch is imported inside the functions (as in ``data``) so that the CLI can offer ``TTA_MODES``
without importing torch for every command.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from .data import Normalization, normalized_batches

if TYPE_CHECKING:
    import torch

TTA_MODES = ("none", "flip")  # test-time augmentation of ``eval --tta``; "none" is single crop only


def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (float32, CPU) of ``forward`` over uint8 NHWC ``images``, in order."""
    import torch

    with torch.inference_mode():
        batches = normalized_batches(images, normalization, batch_size, device, channels_last)
        return torch.cat([forward(batch).float().cpu() for batch in batches])


def classification_metrics(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict:
    """top-1 and top-5 accuracy in percent, mean cross-entropy loss, count."""
    import torch
    import torch.nn.functional as F

    labels = torch.as_tensor(labels, dtype=torch.long)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct = topk.eq(labels[:, None])
    return {
        "top1": 100.0 * correct[:, 0].float().mean().item(),
        "top5": 100.0 * correct.any(1).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "count": int(len(labels)),
    }


def evaluate(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    normalization: Normalization,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    tta: str = "none",
) -> dict:
    """Metrics of ``model`` in eval mode plus images/s of the whole pass (decode-free: data is in memory).

    ``top1``/``top5``/``loss`` are always the single-crop figures; ``tta="flip"`` adds the flip-averaged
    ones beside them as ``tta_flip_*`` (never in their place). ``images_per_sec`` is the single-crop pass.
    """
    import torch

    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    model.eval()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    logits = predict_logits(model, images, normalization, batch_size, device, channels_last)
    elapsed = time.perf_counter() - start
    metrics = classification_metrics(logits, labels)
    metrics["images_per_sec"] = len(images) / elapsed if elapsed > 0 else float("nan")
    if tta == "flip":
        mirrored = predict_logits(lambda x: model(x.flip(3)), images, normalization, batch_size, device, channels_last)
        averaged = flip_averaged_log_probs(logits, mirrored)
        metrics.update({f"tta_flip_{k}": v for k, v in classification_metrics(averaged, labels).items() if k != "count"})
    return metrics


def flip_averaged_log_probs(logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
    """log of the mean of the two softmax distributions (image and its horizontal mirror).

    Probabilities, not logits, are averaged: the mean of two distributions is the two-view ensemble's
    own prediction, and it is a distribution, so the loss computed from it is a true cross-entropy.
    (Averaging logits is a normalised geometric mean instead, which lets one over-confident view
    dominate.) The result is a log-probability, usable wherever logits are (softmax of it is the mean).
    """
    import math

    import torch

    stacked = torch.stack([logits.log_softmax(1), mirrored_logits.log_softmax(1)])
    return torch.logsumexp(stacked, dim=0) - math.log(2)
