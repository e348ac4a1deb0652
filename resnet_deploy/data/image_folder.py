"""ImageFolder sources (``train/<class>/*``, ``test/<class>/*``) from a folder or an archive, and image decoding."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from .. import progress
from ..errors import UserError
from .archive import ARCHIVE_SUFFIXES, _archive_members, _folder_members
from .cifar import _offline_hint
from .datasets import IMAGE_SIZE, ImageDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".ppm")


def _is_image_folder_source(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(ARCHIVE_SUFFIXES)
    return path.is_dir() and any(path.glob("train")) or any(path.glob("*/train"))


def _split_and_class(path: PurePosixPath) -> tuple[str, str] | None:
    parts = path.parts
    for index in range(len(parts) - 2):
        if parts[index] in ("train", "test") and index == len(parts) - 3:
            return parts[index], parts[index + 1]
    return None


def read_image_folder(source: Path, name: str = "imagefolder") -> ImageDataset:
    """Read ``train/<class>/*`` and ``test/<class>/*`` from a folder or an archive, in memory."""
    members = _archive_members(source) if source.is_file() else _folder_members(source)
    encoded: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    for path, read in progress.track(members, f"reading {source.name}", total=None):
        found = _split_and_class(path)
        if found is None or not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        split, label = found
        encoded[split].append((label, str(path), read()))
    train_classes = sorted({label for label, _, _ in encoded["train"]})
    test_classes = sorted({label for label, _, _ in encoded["test"]})
    if not train_classes or not test_classes:
        raise UserError(f"{source} has no images under train/<class>/ and test/<class>/", hint=_offline_hint("imagefolder"))
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise UserError(
            f"{source}: train and test class folders differ (only in train: {only_train or 'none'}, "
            f"only in test: {only_test or 'none'})"
        )
    index = {label: i for i, label in enumerate(train_classes)}
    arrays = {split: _decode_all(items, index) for split, items in encoded.items()}
    return ImageDataset(name, train_classes, *arrays["train"], *arrays["test"], source=str(source))


def _decode_all(items: list[tuple[str, str, bytes]], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    items = sorted(items, key=lambda item: item[1])
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        images = list(pool.map(lambda item: decode_image(item[2], item[1]), items, chunksize=256))
    labels = np.array([index[label] for label, _, _ in items], dtype=np.int64)
    return np.stack(images), labels


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one image to uint8 (32, 32, 3); grey, palette and alpha images are converted to RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise UserError(f"{where} is {image.size[0]}x{image.size[1]}; images must be {IMAGE_SIZE}x{IMAGE_SIZE}")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on malformed files
        # (UnidentifiedImageError, OSError, ValueError, SyntaxError, DecompressionBombError, ...);
        # every one means the same thing to the user: this file is not a usable image.
        raise UserError(f"{where} is not a readable image: {type(exc).__name__}: {exc}") from exc
