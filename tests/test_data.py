"""Dataset readers on synthetic files in the official formats, archives, augmentation, splits."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_deploy.data import (
    CIFAR10_CLASSES,
    Normalization,
    augment,
    calibration_indices,
    load_dataset,
    normalize,
    normalized_batches,
    synthetic_dataset,
    to_tensor_images,
)
from resnet_deploy.errors import UserError


def _batch(rng, count: int, label_key: str, num_classes: int) -> dict:
    """One batch exactly as the official pickles hold it: bytes keys, (N, 3072) uint8 rows in CHW order."""
    data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    batch = {b"data": data, label_key.encode(): [int(v) for v in rng.integers(0, num_classes, size=count)]}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [int(v) % 20 for v in batch[b"fine_labels"]]
    return batch


def write_cifar10(root: Path, per_batch: int = 20) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _batch(rng, per_batch, "labels", 10)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def write_cifar100(root: Path, count: int = 50) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {name: _batch(rng, count, "fine_labels", 100) for name in ("train", "test")}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def test_cifar10_official_folder_and_tarball(tmp_path):
    batches = write_cifar10(tmp_path / "raw")
    dataset = load_dataset("cifar10", tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert dataset.classes == CIFAR10_CLASSES
    assert dataset.train_images.shape == (100, 32, 32, 3) and dataset.test_images.shape == (20, 32, 32, 3)
    # Pixel layout: the official rows are CHW; the first red value is row[0], the first green row[1024].
    first = batches["data_batch_1"][b"data"][0]
    assert dataset.train_images[0, 0, 0, 0] == first[0] and dataset.train_images[0, 0, 0, 1] == first[1024]
    assert dataset.train_labels[:20].tolist() == batches["data_batch_1"][b"labels"]
    # The same data as the .tar.gz torchvision downloads.
    tarball = tmp_path / "dl" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "raw" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = load_dataset("cifar10", tarball.parent, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(from_tar.train_images, dataset.train_images)
    np.testing.assert_array_equal(from_tar.test_labels, dataset.test_labels)


def test_cifar100_uses_fine_labels(tmp_path):
    batches = write_cifar100(tmp_path)
    dataset = load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "cache")
    assert dataset.num_classes == 100 and dataset.classes[3] == "fine3"
    assert dataset.train_labels.tolist() == batches["train"][b"fine_labels"]
    assert dataset.test_images.shape == (50, 32, 32, 3)


def test_cache_is_reused(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "raw")
    first = load_dataset("cifar10", tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    import resnet_deploy.data as data_module

    monkeypatch.setattr(data_module, "read_cifar_archive", lambda *a: pytest.fail("decoded again"))
    again = load_dataset("cifar10", tmp_path / "raw", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.train_images, again.train_images)


@pytest.fixture
def logging_state(monkeypatch):
    """The process-wide state -q/-v change (progress flag, logger levels, root handlers), put back."""
    import logging

    from resnet_deploy import progress

    monkeypatch.setattr(progress, "_enabled", progress.enabled())
    root, project = logging.getLogger(), logging.getLogger("resnet_deploy")
    saved = root.level, list(root.handlers), project.level
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    project.setLevel(saved[2])


def test_status_lines_are_log_messages_a_caller_can_capture_or_silence(tmp_path, caplog, logging_state):
    """The library's status lines go through logging (not print); the CLI shows them, and -q silences them."""
    import logging

    from click.testing import CliRunner

    from resnet_deploy.cli import main

    write_cifar10(tmp_path / "raw")
    load_dataset("cifar10", tmp_path / "raw", cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    unreadable = f"cache file {cache_file} is unreadable; decoding again"

    cache_file.write_bytes(b"not an npz")
    with caplog.at_level(logging.INFO, logger="resnet_deploy"):
        load_dataset("cifar10", tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [("resnet_deploy.data.cache", logging.INFO, unreadable)]

    caplog.clear()
    cache_file.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):  # a caller silencing the package
        load_dataset("cifar10", tmp_path / "raw", cache_dir=tmp_path / "cache")
    assert caplog.records == []

    command = ["data", "--data-dir", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache")]
    for flag, shown in (("-v", True), ("-q", False)):
        cache_file.write_bytes(b"not an npz")
        result = CliRunner().invoke(main, [*command, flag])
        assert result.exit_code == 0, result.output
        assert (unreadable in result.stderr) is shown, result.stderr
        assert '"classes"' in result.stdout and unreadable not in result.stdout  # stdout stays the result


def test_cifar_pickle_with_code_is_refused(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


def test_offline_without_data_explains(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset("cifar100", tmp_path / "nothing-here", cache_dir=tmp_path / "cache")
    assert "cifar-100-python" in str(info.value) and "--download" in str(info.value)
    with pytest.raises(UserError, match="needs --data-dir"):
        load_dataset("cifar10", None)
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("mnist", tmp_path)


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(UserError, match="(?s)could not download cifar10 .*looks offline"):
        load_dataset("cifar10", tmp_path, download=True, cache_dir=tmp_path / "cache")


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(root: Path, classes=("cats", "dogs"), per_class: int = 3) -> None:
    for split in ("train", "test"):
        for index, label in enumerate(classes):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(_png((index * 100, i * 10, 50)))


@pytest.mark.parametrize("kind", ["folder", "tar.xz", "tar.gz", "zip"])
def test_image_folder_sources(tmp_path, kind):
    write_image_folder(tmp_path / "tree" / "pets")
    source = tmp_path / "tree" / "pets"
    if kind != "folder":
        source = tmp_path / f"pets.{kind}"
        if kind == "zip":
            with zipfile.ZipFile(source, "w") as zf:
                for file in sorted((tmp_path / "tree").rglob("*.png")):
                    zf.write(file, file.relative_to(tmp_path / "tree").as_posix())
        else:
            with tarfile.open(source, "w:" + kind.split(".")[1]) as tar:
                tar.add(tmp_path / "tree" / "pets", arcname="pets")
    dataset = load_dataset("imagefolder", source, cache_dir=tmp_path / "cache")
    assert dataset.classes == ["cats", "dogs"]
    assert dataset.train_images.shape == (6, 32, 32, 3)
    assert sorted(dataset.train_labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert dataset.train_images[dataset.train_labels == 1][:, 0, 0, 0].tolist() == [100, 100, 100]


def test_archive_with_a_one_letter_file_name_loads(tmp_path):
    """A file beside the class folders whose name is one letter (a notes file "N") is skipped like
    any file that is not an image under train/<class>/; the absolute-path check must not trip on it."""
    write_image_folder(tmp_path / "tree" / "pets", per_class=1)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "pets", arcname="pets")
        info = tarfile.TarInfo("N")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"notes"))
    assert load_dataset("imagefolder", archive, cache_dir=tmp_path / "cache").classes == ["cats", "dogs"]


def test_path_traversal_archive_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = _png((1, 2, 3))
        for name in ("data/train/a/0.png", "data/test/a/0.png", "../../escaped.png"):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UserError, match="points outside the archive"):
        load_dataset("imagefolder", archive, cache_dir=tmp_path / "cache")
    assert not (tmp_path.parent / "escaped.png").exists()


def test_mismatched_classes_and_wrong_size(tmp_path):
    write_image_folder(tmp_path / "a")
    (tmp_path / "a" / "train" / "birds").mkdir()
    (tmp_path / "a" / "train" / "birds" / "0.png").write_bytes(_png((0, 0, 0)))
    with pytest.raises(UserError, match="only in train: \\['birds'\\]"):
        load_dataset("imagefolder", tmp_path / "a", cache_dir=tmp_path / "cache")
    write_image_folder(tmp_path / "b")
    Image.new("RGB", (64, 48)).save(tmp_path / "b" / "test" / "cats" / "big.png")
    with pytest.raises(UserError, match="64x48; images must be 32x32"):
        load_dataset("imagefolder", tmp_path / "b", cache_dir=tmp_path / "cache")


def test_shared_cifar10_jpeg(cifar10):
    assert cifar10.classes == CIFAR10_CLASSES
    assert len(cifar10.train_images) == 50_000 and len(cifar10.test_images) == 10_000
    assert np.bincount(cifar10.test_labels).tolist() == [1000] * 10
    mean = np.array(cifar10.normalization.mean)
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=0.003)  # the published CIFAR-10 means


def test_augmentation_properties():
    images = to_tensor_images(np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    out = augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "same generator seed, same augmentation"
    # Each output is a 32x32 window of the zero-padded image, possibly mirrored.
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(8):
        found = False
        for dy in range(9):
            for dx in range(9):
                window = padded[i, :, dy : dy + 32, dx : dx + 32]
                if torch.equal(out[i], window) or torch.equal(out[i], window.flip(2)):
                    found = True
        assert found
    # Flips happen about half the time, and crops move: not the identity.
    assert not torch.equal(out, images)


def test_normalize_uses_stored_constants():
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(x, norm), torch.full((1, 3, 2, 2), 2.0))
    assert normalize(x, norm, channels_last=True).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalized_batches_cover_the_images_in_order(channels_last):
    images = np.random.default_rng(0).integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    norm = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    batches = list(normalized_batches(images, norm, 10, channels_last=channels_last))
    assert [len(batch) for batch in batches] == [10, 10, 3]
    assert all(batch.dtype == torch.float32 and batch.shape[1:] == (3, 32, 32) for batch in batches)
    assert all(batch.is_contiguous(memory_format=torch.channels_last) == channels_last for batch in batches)
    # Bit for bit the whole set normalised at once: the batches are its slices, in order.
    assert torch.equal(torch.cat(batches), normalize(to_tensor_images(images), norm))
    assert list(normalized_batches(images[:0], norm, 10)) == []


def test_calibration_split_is_deterministic_and_train_only():
    a, b = calibration_indices(50_000, 1000), calibration_indices(50_000, 1000)
    assert np.array_equal(a, b) and len(np.unique(a)) == 1000 and a.max() < 50_000
    with pytest.raises(UserError):
        calibration_indices(100, 0)
    with pytest.raises(UserError):
        calibration_indices(100, 101)


def test_synthetic_dataset_is_deterministic():
    a, b = synthetic_dataset(), synthetic_dataset()
    assert np.array_equal(a.train_images, b.train_images) and a.num_classes == 10
    assert synthetic_dataset(num_classes=100, train_size=300, test_size=100).num_classes == 100
