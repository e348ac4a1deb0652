"""Datasets: CIFAR-10/100 archives, ImageFolder trees and archives, and a synthetic set.

Every source is decoded once into uint8 arrays (N, 32, 32, 3) and cached as an ``.npz`` file, so later
runs start in a fraction of a second. Training keeps the arrays resident on the device and augments on
tensors (``augment``), on the GPU when there is one.

Files from elsewhere are treated as untrusted: the CIFAR pickles go through an unpickler that admits
numpy arrays and nothing else, and archives are read member by member in memory (nothing is extracted
to disk), refusing absolute paths, ``..``, links, device files and oversized contents.
"""

from __future__ import annotations

import io
import logging
import lzma
import os
import pickle
import tarfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from . import progress
from .errors import UserError
from .fileio import atomic_path, file_fingerprint, sha256_bytes

log = logging.getLogger(__name__)

IMAGE_SIZE = 32
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATASET_NAMES = ("cifar10", "cifar100", "imagefolder", "synthetic")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".ppm")

# Limits for archives from elsewhere: CIFAR-sized data is ~200 MB decoded; a declared size far past
# that is a decompression bomb or the wrong file. Override with RESNET_DEPLOY_MAX_ARCHIVE_BYTES (read
# when an archive is read, not at import: a bad value must be a message, not a traceback on every command).
MAX_ARCHIVE_BYTES = 4 << 30
MAX_ARCHIVE_BYTES_ENV = "RESNET_DEPLOY_MAX_ARCHIVE_BYTES"
CACHE_ENV = "RESNET_DEPLOY_CACHE"
MAX_MEMBER_BYTES = 64 << 20
MAX_MEMBERS = 2_000_000

# What the tar/zip/gzip/xz/bz2 readers raise on a truncated or corrupt archive (a partial download is
# the usual cause). RuntimeError: an encrypted zip member; NotImplementedError: an unknown compression.
_CORRUPT_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    lzma.LZMAError,
    zlib.error,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


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


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of the training images (0..1 scale); stored with every model."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))

    @classmethod
    def of_images(cls, images: np.ndarray) -> "Normalization":
        # Exact sums in int64, chunked, so 50,000 images never become a 1 GB float64 copy.
        total = np.zeros(3, dtype=np.int64)
        squares = np.zeros(3, dtype=np.int64)
        for start in range(0, len(images), 4096):
            chunk = images[start : start + 4096].reshape(-1, 3).astype(np.int64)
            total += chunk.sum(0)
            squares += (chunk * chunk).sum(0)
        count = max(1, images.shape[0] * images.shape[1] * images.shape[2])
        mean = total / count / 255.0
        std = np.sqrt(np.maximum(squares / count / 255.0**2 - mean**2, 0.0))
        return cls(tuple(mean.round(6).tolist()), tuple(std.round(6).tolist()))


@dataclass
class ImageDataset:
    """A decoded dataset: uint8 images (N, 32, 32, 3) and int64 labels for train and test."""

    name: str
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str = ""
    normalization: Normalization = field(init=False)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8:
                raise UserError(f"{self.name} {split} images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
            if len(images) != len(labels):
                raise UserError(f"{self.name} {split}: {len(images)} images but {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise UserError(f"{self.name} {split}: labels outside 0..{len(self.classes) - 1}")
        if len(self.train_images) == 0 or len(self.test_images) == 0:
            raise UserError(f"{self.name}: the train and test splits must both hold images")
        self.normalization = Normalization.of_images(self.train_images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "train_size": int(len(self.train_images)),
            "test_size": int(len(self.test_images)),
            "source": self.source,
            "normalization": self.normalization.to_dict(),
        }

    def subset(self, train_size: int | None = None, test_size: int | None = None, seed: int = 0) -> "ImageDataset":
        """A deterministic random subset of each split (for quick runs); None keeps a split whole."""
        train = _seeded_subset(len(self.train_images), train_size, seed)
        test = _seeded_subset(len(self.test_images), test_size, seed + 1)
        return ImageDataset(
            self.name,
            self.classes,
            self.train_images[train],
            self.train_labels[train],
            self.test_images[test],
            self.test_labels[test],
            source=f"{self.source}[train={train_size},test={test_size},seed={seed}]",
        )


def _seeded_subset(length: int, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= length:
        return np.arange(length)
    if size <= 0:
        raise UserError(f"subset size must be positive, got {size}")
    return np.sort(np.random.default_rng(seed).permutation(length)[:size])


def calibration_indices(num_train: int, size: int, seed: int = 2016) -> np.ndarray:
    """The deterministic calibration split: ``size`` training images chosen by a fixed seed.

    Calibration never touches the test split, so the accuracy reported after quantization is measured
    on images that neither training nor calibration saw.
    """
    if size <= 0:
        raise UserError(f"calibration size must be positive, got {size}")
    if size > num_train:
        raise UserError(f"calibration size {size} exceeds the {num_train} training images")
    return np.sort(np.random.default_rng(seed).permutation(num_train)[:size])


# --------------------------------------------------------------------------------------------- loading


def default_cache_dir() -> Path:
    """$RESNET_DEPLOY_CACHE, else ~/.cache/resnet-deploy. An empty or blank value counts as unset
    (``Path("")`` is the current folder: the cache would land wherever the command runs)."""
    value = os.environ.get(CACHE_ENV, "")
    if not value.strip():
        return Path.home() / ".cache" / "resnet-deploy"
    return Path(value).expanduser()


def max_archive_bytes() -> int:
    """The total declared size an archive may have: $RESNET_DEPLOY_MAX_ARCHIVE_BYTES (a positive whole
    number of bytes; ``_`` separators allowed), else ``MAX_ARCHIVE_BYTES``."""
    value = os.environ.get(MAX_ARCHIVE_BYTES_ENV, "").strip()
    if not value:
        return MAX_ARCHIVE_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = None
    if limit is None or limit <= 0:
        raise UserError(
            f"environment variable {MAX_ARCHIVE_BYTES_ENV}={value!r} is not a positive whole number of bytes",
            hint=f"e.g. {MAX_ARCHIVE_BYTES_ENV}={8 << 30} for 8 GiB, or unset it for the default ({MAX_ARCHIVE_BYTES >> 30} GiB)",
        )
    return limit


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


# --------------------------------------------------------------------------------------------- CIFAR


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


# --------------------------------------------------------------------------------------------- ImageFolder


def _is_image_folder_source(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(ARCHIVE_SUFFIXES)
    return path.is_dir() and any(path.glob("train")) or any(path.glob("*/train"))


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse member names that would escape an extraction directory."""
    member = PurePosixPath(name)
    if member.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"archive {archive} was refused: member {name!r} has an absolute path")
    if ".." in member.parts or "\\" in name:
        raise UserError(f"archive {archive} was refused: member {name!r} points outside the archive")
    return member


def _archive_members(archive: Path) -> Iterator[tuple[PurePosixPath, "callable"]]:
    """Yield (path, read) for every regular file of a tar or zip archive, after safety checks.

    Links, device files and FIFOs refuse the whole archive; so do declared sizes past the limits.
    """
    declared_total = 0
    count = 0
    limit = max_archive_bytes()

    def account(name: str, size: int) -> None:
        nonlocal declared_total, count
        declared_total += size
        count += 1
        if size > MAX_MEMBER_BYTES or declared_total > limit or count > MAX_MEMBERS:
            raise UserError(
                f"archive {archive} was refused: its contents exceed the size limit "
                f"({limit / 2**30:.1f} GiB in all, {MAX_MEMBER_BYTES >> 20} MiB a file, {MAX_MEMBERS} files) "
                f"at member {name!r} (a decompression bomb or the wrong file)",
                hint="raise RESNET_DEPLOY_MAX_ARCHIVE_BYTES if the archive is genuine",
            )

    if not archive.is_file():
        raise UserError(f"archive not found: {archive}")
    if archive.name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except _CORRUPT_ARCHIVE_ERRORS as exc:
            raise UserError(f"{archive} is not a valid zip archive: {exc}") from exc
        with zf:
            for info in zf.infolist():
                member = _check_member_name(info.filename, archive)
                mode = (info.external_attr >> 16) & 0o170000
                if mode and mode not in (0o100000, 0o040000):
                    raise UserError(f"archive {archive} was refused: member {info.filename!r} is a link or special file")
                if info.is_dir():
                    continue
                if info.flag_bits & 0x1:
                    raise UserError(f"archive {archive} was refused: member {info.filename!r} is encrypted")
                account(info.filename, info.file_size)
                yield member, (lambda info=info: _bounded_read(lambda: zf.open(info), info.file_size, archive, info.filename))
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except _CORRUPT_ARCHIVE_ERRORS as exc:
        raise UserError(f"{archive} is not a readable tar archive: {exc}") from exc
    with tf:
        try:
            for info in tf:
                member = _check_member_name(info.name, archive)
                if info.isdir():
                    continue
                if not info.isreg():
                    kind = "link" if (info.issym() or info.islnk()) else "device or special file"
                    raise UserError(f"archive {archive} was refused: member {info.name!r} is a {kind}")
                account(info.name, info.size)
                yield member, (lambda info=info: _bounded_read(lambda: tf.extractfile(info), info.size, archive, info.name))
        except _CORRUPT_ARCHIVE_ERRORS as exc:
            raise UserError(f"{archive} is corrupt or truncated: {exc}") from exc


def _bounded_read(open_member, declared: int, archive: Path, name: str) -> bytes:
    """Read one member, never more than it declares; decoder errors become a clear message.

    Members are read by the caller between iterations, outside the iteration's own error handling,
    so a truncated or corrupt archive must be caught here too.
    """
    try:
        with open_member() as handle:
            data = handle.read(declared + 1)
    except _CORRUPT_ARCHIVE_ERRORS as exc:
        raise UserError(f"{archive} is corrupt or truncated (at member {name!r}): {exc}") from exc
    if len(data) > declared:
        raise UserError(f"archive {archive} was refused: member {name!r} is larger than it declares")
    return data


def _split_and_class(path: PurePosixPath) -> tuple[str, str] | None:
    parts = path.parts
    for index in range(len(parts) - 2):
        if parts[index] in ("train", "test") and index == len(parts) - 3:
            return parts[index], parts[index + 1]
    return None


def _folder_members(root: Path) -> Iterator[tuple[PurePosixPath, "callable"]]:
    def read(file: Path) -> bytes:
        try:
            if file.stat().st_size > MAX_MEMBER_BYTES:
                raise UserError(f"data dir {root} was refused: {file} is larger than {MAX_MEMBER_BYTES >> 20} MiB")
            return file.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc.strerror or exc}") from exc

    try:
        files = sorted(root.rglob("*"))
    except OSError as exc:
        raise UserError(f"cannot list data dir {root}: {exc.strerror or exc}") from exc
    for file in files:
        if file.is_symlink():
            raise UserError(f"data dir {root} was refused: {file} is a symbolic link")
        if file.is_file():
            yield PurePosixPath(file.relative_to(root).as_posix()), (lambda file=file: read(file))
        elif not file.is_dir():  # reading a FIFO would block forever, a device could be endless
            raise UserError(f"data dir {root} was refused: {file} is a device file, FIFO or socket")


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


# --------------------------------------------------------------------------------------------- synthetic


def synthetic_dataset(
    num_classes: int = 10, train_size: int = 2560, test_size: int = 512, seed: int = 0
) -> ImageDataset:
    """Images with class structure a small CNN can learn in one epoch: a class colour and stripe
    pattern under noise. For smoke runs and tests, not for accuracy claims."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, size=(num_classes, 3))
    frequencies = rng.uniform(0.2, 1.2, size=(num_classes, 2))
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]

    def make(count: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
        split_rng = np.random.default_rng(seed * 1000 + split_seed)
        labels = np.arange(count) % num_classes
        split_rng.shuffle(labels)
        pattern = np.sin(frequencies[labels, 0, None, None] * xx + frequencies[labels, 1, None, None] * yy)
        images = colours[labels][:, None, None, :] + 35 * pattern[..., None]
        images = images + split_rng.normal(0, 25, size=images.shape)
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    classes = [f"class{i}" for i in range(num_classes)]
    return ImageDataset("synthetic", classes, *make(train_size, 1), *make(test_size, 2), source=f"synthetic(seed={seed})")


# --------------------------------------------------------------------------------------------- tensors


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


def iterate_batches(count: int, batch_size: int) -> Iterable[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))
