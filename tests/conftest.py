"""Shared fixtures: the shared CIFAR-10 copy, a small subset of it, and briefly trained checkpoints.

The trained checkpoints are session-scoped: quantize, export and bench tests all use the same one, so
the suite trains once (about half a minute on 2 cores); so is the PTQ of the CIFAR-10 one, which the
quantize accuracy test and the int8 export tests share.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = Path(os.environ.get("RESNET_DEPLOY_TEST_CIFAR10", REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))

# Keep tests reproducible and polite on a 2-core machine.
torch.manual_seed(0)
os.environ.setdefault("RESNET_DEPLOY_QUIET", "1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """``@pytest.mark.tensorrt`` (``rtx=True``: TensorRT-RTX in particular): skipped where the bindings
    cannot be used, failed instead in CI when the tensorrt extra is installed (tests/tensorrt_support.py)."""
    marker = item.get_closest_marker("tensorrt")
    if marker is not None:
        from tensorrt_support import require_tensorrt

        require_tensorrt(rtx=bool(marker.kwargs.get("rtx", False)))


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    """The shared CIFAR-10 JPEG archive. CI has it; elsewhere tests that need it are skipped."""
    if not SHARED_CIFAR10.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide {SHARED_CIFAR10}")
        pytest.skip(f"shared CIFAR-10 not found at {SHARED_CIFAR10}")
    return SHARED_CIFAR10


@pytest.fixture(scope="session")
def cifar10(cifar10_archive):
    """The full decoded CIFAR-10 (cached in the user cache after the first decode)."""
    from resnet_deploy.data import load_dataset

    return load_dataset("cifar10", cifar10_archive)


@pytest.fixture(scope="session")
def cifar10_small(cifar10):
    """6,000 training and 1,000 test images, seeded: enough to train a model well above chance."""
    return cifar10.subset(6000, 1000)


@pytest.fixture(scope="session")
def trained_resnet20(cifar10_small, tmp_path_factory) -> Path:
    """ResNet20 trained 3 epochs on the small CIFAR-10 subset: the checkpoint later stages test with."""
    from resnet_deploy.train import TrainConfig, train

    output = tmp_path_factory.mktemp("trained_resnet20")
    config = TrainConfig(model="resnet20", epochs=3, batch_size=128, lr=0.1, device="cpu", eval_batch_size=500)
    train(config, cifar10_small, output)
    return output / "last.pt"


@pytest.fixture(scope="session")
def ptq_resnet20(trained_resnet20, cifar10_small, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """trained_resnet20 quantized by PTQ for each target, 500 calibration images from the training split,
    evaluated on the subset's 1,000 test images: ``{target: (artifact folder, metrics)}``.

    One PTQ per target for the session: the quantize accuracy test reads the metrics and the int8 export
    tests export the artifacts. Read-only: a test that changes a file copies the folder first."""
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import quantize_ptq

    loaded = load_checkpoint(trained_resnet20)
    folder = tmp_path_factory.mktemp("ptq_resnet20")
    return {target: (folder / target, quantize_ptq(loaded, cifar10_small, folder / target, target=target, calib_size=500))
            for target in ("tensorrt", "cpu")}


@pytest.fixture(scope="session")
def synthetic():
    from resnet_deploy.data import synthetic_dataset

    return synthetic_dataset()


@pytest.fixture(scope="session")
def synthetic_checkpoint(synthetic, tmp_path_factory) -> Path:
    """ResNet20 after one epoch on the synthetic set (seconds): for tests that need any real checkpoint."""
    from resnet_deploy.train import TrainConfig, train

    output = tmp_path_factory.mktemp("synthetic_resnet20")
    train(TrainConfig(model="resnet20", epochs=1, batch_size=128, device="cpu"), synthetic, output)
    return output / "last.pt"
