"""A decoded dataset (``ImageDataset``), its ``Normalization``, the seeded splits and the synthetic set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError

IMAGE_SIZE = 32
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATASET_NAMES = ("cifar10", "cifar100", "imagefolder", "synthetic")


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
