"""The official CIFAR-10/100 python archives: where they are, their download, and their pickles, read
through an unpickler that admits numpy arrays and nothing else."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import UserError
from .archive import _archive_members
from .datasets import IMAGE_SIZE, ImageDataset

# torchvision's official sources, kept so online users get the real download with checksums.
CIFAR_SOURCES = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "folder": "cifar-10-batches-py",
        "train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        "test": ["test_batch"],
        "meta": ("batches.meta", b"label_names"),
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", b"fine_label_names"),
    },
}


def _offline_hint(name: str) -> str:
    if name in CIFAR_SOURCES:
        src = CIFAR_SOURCES[name]
        return (
            f"point --data-dir at a folder holding {src['folder']}/ or {src['filename']}, "
            "or at an ImageFolder tree/archive (train/<class>/, test/<class>/); "
            "online, add --download to fetch it from the official site"
        )
    return "point --data-dir at an ImageFolder tree or archive (train/<class>/*, test/<class>/*)"


def _locate_cifar(name: str, path: Path) -> Path | None:
    src = CIFAR_SOURCES[name]
    candidates = [path / src["folder"], path, path / src["filename"]]
    if path.is_file() and path.name == src["filename"]:
        candidates.insert(0, path)
    for candidate in candidates:
        if candidate.is_dir() and (candidate / src["test"][0]).is_file():
            return candidate
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz")) and candidate.name == src["filename"]:
            return candidate
    return None


def _download_cifar(name: str, path: Path) -> Path:
    src = CIFAR_SOURCES[name]
    try:
        from torchvision.datasets.utils import download_url
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise UserError("downloading needs torchvision") from exc
    path.mkdir(parents=True, exist_ok=True)
    try:
        download_url(src["url"], str(path), src["filename"], src["md5"])
    except Exception as exc:  # urllib raises many kinds; all mean the same to the user
        raise UserError(
            f"could not download {name} from {src['url']}: {exc}",
            hint="this machine looks offline; " + _offline_hint(name),
        ) from exc
    return path / src["filename"]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, bytes, numpy arrays) and refuses anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1"): harmless.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays")
        return super().find_class(module, name)


def _unpickle(data: bytes, what: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    # MemoryError/OverflowError: a damaged length field (a BYTEARRAY8 opcode claiming 2**60 bytes)
    # makes the unpickler try to allocate that much before it reads a byte of it.
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, MemoryError, OverflowError) as exc:
        raise UserError(f"{what} is not a valid CIFAR batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{what} is not a valid CIFAR batch: expected a dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_archive(name: str, location: Path) -> ImageDataset:
    """Read the official ``cifar-10-batches-py`` / ``cifar-100-python`` folder or ``.tar.gz``."""
    src = CIFAR_SOURCES[name]
    files = _read_cifar_files(location, [*src["train"], *src["test"], src["meta"][0]])
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for member in names:
            batch = _unpickle(files[member], f"{location}:{member}")
            try:
                data = np.asarray(batch["data"], dtype=np.uint8)
                images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
            except (KeyError, ValueError, TypeError, OverflowError) as exc:
                raise UserError(f"{location}:{member} lacks a valid 'data'/'{label_key}' entry: {exc}") from exc
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)

    meta = _unpickle(files[src["meta"][0]], f"{location}:{src['meta'][0]}")
    meta_key = src["meta"][1].decode()
    names = meta.get(meta_key, [])
    if not isinstance(names, (list, tuple)):
        raise UserError(f"{location}:{src['meta'][0]} lacks a valid '{meta_key}' list")
    classes = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in names]
    train_images, train_labels = split(src["train"])
    test_images, test_labels = split(src["test"])
    return ImageDataset(name, classes, train_images, train_labels, test_images, test_labels, source=str(location))


def _read_cifar_files(location: Path, wanted: list[str]) -> dict[str, bytes]:
    if location.is_dir():
        missing = [w for w in wanted if not (location / w).is_file()]
        if missing:
            raise UserError(f"{location} lacks {', '.join(missing)}")
        return {w: (location / w).read_bytes() for w in wanted}
    found: dict[str, bytes] = {}
    for member_path, read in _archive_members(location):
        if member_path.name in wanted and len(member_path.parts) <= 2:
            found[member_path.name] = read()
    missing = [w for w in wanted if w not in found]
    if missing:
        raise UserError(f"{location} lacks {', '.join(missing)}")
    return found
