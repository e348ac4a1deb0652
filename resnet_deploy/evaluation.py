"""Accuracy of any callable model on uint8 images: the one definition every stage reports with."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import Normalization, normalize, to_tensor_images


def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    normalization: Normalization,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (float32, CPU) of ``forward`` over uint8 NHWC ``images``, in order."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = to_tensor_images(images[start : start + batch_size], device)
            outputs.append(forward(normalize(batch, normalization, channels_last)).float().cpu())
    return torch.cat(outputs)


def classification_metrics(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict:
    """top-1 and top-5 accuracy in percent, mean cross-entropy loss, count."""
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
) -> dict:
    """Metrics of ``model`` in eval mode plus images/s of the whole pass (decode-free: data is in memory)."""
    model.eval()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    logits = predict_logits(model, images, normalization, batch_size, device, channels_last)
    elapsed = time.perf_counter() - start
    metrics = classification_metrics(logits, labels)
    metrics["images_per_sec"] = len(images) / elapsed if elapsed > 0 else float("nan")
    return metrics
