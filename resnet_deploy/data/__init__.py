"""Datasets: CIFAR-10/100 archives, ImageFolder trees and archives, and a synthetic set.

Every source is decoded once into uint8 arrays (N, 32, 32, 3) and cached as an ``.npz`` file, so later
runs start in a fraction of a second. Training keeps the arrays resident on the device and augments on
tensors (``augment``), on the GPU when there is one.

Files from elsewhere are treated as untrusted: the CIFAR pickles go through an unpickler that admits
numpy arrays and nothing else, and archives are read member by member in memory (nothing is extracted
to disk), refusing absolute paths, ``..``, links, device files and oversized contents.

The package, one module per job: ``datasets`` (``ImageDataset``, ``Normalization``, splits, the
synthetic set), ``cache`` (the ``.npz`` cache), ``cifar`` (the official archives and their safe
unpickler), ``archive`` (tar/zip/folder members with their safety checks), ``image_folder`` and
``transforms`` (tensors, normalisation, normalised batches, augmentation). ``load_dataset`` is
here, and every name callers import from ``resnet_deploy.data`` still comes from here (the names
``load_dataset`` calls are looked up here, so patching ``resnet_deploy.data.synthetic_dataset`` still
takes effect).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .archive import (  # noqa: F401 (re-exported)
    ARCHIVE_SUFFIXES,
    MAX_ARCHIVE_BYTES,
    MAX_ARCHIVE_BYTES_ENV,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    max_archive_bytes,
)
from .cache import CACHE_ENV, _cached, default_cache_dir  # noqa: F401 (re-exported)
from .cifar import CIFAR_SOURCES, _download_cifar, _locate_cifar, _offline_hint, _unpickle, read_cifar_archive  # noqa: F401
from .datasets import (  # noqa: F401 (re-exported)
    CIFAR10_CLASSES,
    DATASET_NAMES,
    IMAGE_SIZE,
    ImageDataset,
    Normalization,
    calibration_indices,
    synthetic_dataset,
)
from .image_folder import IMAGE_SUFFIXES, _is_image_folder_source, decode_image, read_image_folder  # noqa: F401
from .transforms import augment, normalize, normalized_batches, to_tensor_images  # noqa: F401 (re-exported)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """Load a dataset by name, decoding once and caching the arrays.

    * ``cifar10`` / ``cifar100``: the official python archives (``cifar-10-batches-py``,
      ``cifar-100-python``, or their ``.tar.gz``) under ``data_dir``; ``download=True`` fetches them from
      torchvision's URLs with MD5 checks. ``cifar10`` also accepts an ImageFolder tree or archive whose
      classes are CIFAR-10's (such as ``cifar10-jpeg.tar.xz``).
    * ``imagefolder``: ``data_dir`` is a folder or archive with ``train/<class>/*`` and ``test/<class>/*``.
    * ``synthetic``: a small generated set with learnable class structure, for smoke runs and tests.
    """
    name = name.lower()
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "synthetic":
        return synthetic_dataset()
    if data_dir is None:
        raise UserError(f"dataset {name} needs --data-dir", hint=_offline_hint(name))
    path = Path(data_dir).expanduser()
    if name in CIFAR_SOURCES:
        located = _locate_cifar(name, path)
        if located is None and download:
            located = _download_cifar(name, path)
        if located is not None:
            return _cached(name, located, lambda: read_cifar_archive(name, located), cache_dir)
        if name == "cifar10" and _is_image_folder_source(path):
            dataset = _cached(name, path, lambda: read_image_folder(path, "cifar10"), cache_dir)
            if dataset.classes != CIFAR10_CLASSES:
                raise UserError(
                    f"{path} holds classes {dataset.classes}, not CIFAR-10's {CIFAR10_CLASSES}",
                    hint="use --dataset imagefolder for other class sets",
                )
            return dataset
        raise UserError(f"no {name} data found in {path}", hint=_offline_hint(name))
    if not path.exists():
        raise UserError(f"data dir not found: {path}")
    return _cached(name, path, lambda: read_image_folder(path, path.name), cache_dir)
