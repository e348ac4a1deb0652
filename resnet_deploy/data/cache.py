"""The decoded-array cache: every source is decoded once into an ``.npz`` file that later runs read."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fileio import atomic_path, file_fingerprint, sha256_bytes
from .datasets import ImageDataset

log = logging.getLogger(__name__)

CACHE_ENV = "RESNET_DEPLOY_CACHE"


def default_cache_dir() -> Path:
    """$RESNET_DEPLOY_CACHE, else ~/.cache/resnet-deploy. An empty or blank value counts as unset
    (``Path("")`` is the current folder: the cache would land wherever the command runs)."""
    value = os.environ.get(CACHE_ENV, "")
    if not value.strip():
        return Path.home() / ".cache" / "resnet-deploy"
    return Path(value).expanduser()


def _cached(name: str, source: Path, decode, cache_dir) -> ImageDataset:
    """Decode ``source`` once; later calls read the uint8 arrays from an ``.npz`` in the cache."""
    key = sha256_bytes(f"{name}:{file_fingerprint(source) if source.is_file() else _dir_fingerprint(source)}".encode())[:20]
    cache_file = Path(cache_dir or default_cache_dir()) / f"{name}-{key}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as data:
                return ImageDataset(
                    name,
                    [str(c) for c in data["classes"]],
                    data["train_images"],
                    data["train_labels"],
                    data["test_images"],
                    data["test_labels"],
                    source=str(source),
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UserError):
            log.info(f"cache file {cache_file} is unreadable; decoding again")
    dataset = decode()
    dataset.source = str(source)
    try:
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    classes=np.array(dataset.classes),
                    train_images=dataset.train_images,
                    train_labels=dataset.train_labels,
                    test_images=dataset.test_images,
                    test_labels=dataset.test_labels,
                )
    except OSError as exc:  # a read-only cache costs time, not correctness
        log.info(f"could not write dataset cache {cache_file}: {exc}")
    return dataset


def _dir_fingerprint(path: Path) -> str:
    entries = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())
    return sha256_bytes(repr(entries).encode())
