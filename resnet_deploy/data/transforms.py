"""uint8 images to tensors: layout, normalisation, normalised batches, the training augmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

from .datasets import Normalization

if TYPE_CHECKING:
    import torch


def to_tensor_images(images: np.ndarray, device="cpu"):
    """uint8 NHWC numpy -> uint8 NCHW torch tensor on ``device`` (kept uint8: 4x less memory)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


def normalize(images_uint8, normalization: Normalization, channels_last: bool = False):
    """uint8 NCHW -> float32 normalised with the model's stored mean and std."""
    import torch

    mean = torch.tensor(normalization.mean, device=images_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=images_uint8.device).view(1, 3, 1, 1)
    out = (images_uint8.float() / 255.0 - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def normalized_batches(
    images: np.ndarray, normalization: Normalization, batch_size: int, device="cpu", channels_last: bool = False
) -> Iterator[torch.Tensor]:
    """uint8 NHWC numpy images -> float32 normalised NCHW batches on ``device``, in order: batch ``i``
    holds images ``[i * batch_size, (i + 1) * batch_size)`` (the last one may be shorter).

    A generator: each batch is made when it is reached, so a pass holds one float batch at a time."""
    for start in range(0, len(images), batch_size):
        yield normalize(to_tensor_images(images[start : start + batch_size], device), normalization, channels_last)


def augment(images_uint8, generator, padding: int = 4):
    """The standard CIFAR augmentation on a batch of uint8 NCHW tensors, on their device:
    zero-pad by 4, take a random 32x32 crop, flip horizontally with probability 1/2.

    All randomness comes from ``generator`` so a run is reproducible and resumable batch by batch.
    """
    import torch
    import torch.nn.functional as F

    batch, _, height, width = images_uint8.shape
    device = images_uint8.device
    padded = F.pad(images_uint8, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=generator.device).to(device)
    flips = torch.rand(batch, generator=generator, device=generator.device).to(device) < 0.5
    rows = offsets[0, :, None] + torch.arange(height, device=device)[None, :]  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=device)[None, :]  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(images_uint8.shape[1], device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]
