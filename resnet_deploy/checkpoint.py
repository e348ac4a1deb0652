"""The checkpoint format every stage reads: one ``torch.save`` dict of tensors and plain data.

It loads with ``torch.load(weights_only=True)``, so a checkpoint from elsewhere cannot run code. Keys:

``format``         "resnet-deploy/checkpoint", ``version`` 1
``model``          ModelSpec as a dict (name, num_classes, plain, shortcut)
``state_dict``     model weights (FP32)
``normalization``  {"mean": [3 floats], "std": [3 floats]}: every later stage normalises with these
``dataset``        {"name", "classes", "train_size", "test_size", "source"}
``epoch``          epochs completed; ``step``: batches done in the epoch in progress (0 at epoch end)
``train_config``   the TrainConfig as a dict
``optimizer``, ``scheduler``, ``rng``, ``best_accuracy``, ``history``: training state for ``--resume``
``content_sha256`` digest of all the above (``content_digest``), checked on every read
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import Normalization
from .errors import UserError
from .fileio import sha256_file, torch_load_safe, torch_save_atomic
from .models import CifarResNet, ModelSpec, build_model

FORMAT = "resnet-deploy/checkpoint"
VERSION = 1
DIGEST_KEY = "content_sha256"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what later stages need to use it correctly."""

    model: CifarResNet
    spec: ModelSpec
    normalization: Normalization
    classes: list[str]
    path: Path
    sha256: str
    raw: dict

    @property
    def dataset_name(self) -> str:
        return self.raw.get("dataset", {}).get("name", "")


def resolve_checkpoint(reference: str | os.PathLike) -> Path:
    """A checkpoint file path as given, or for ``pretrained:NAME`` the shipped file of NAME, its sha256
    checked against the zoo registry. The one place a checkpoint reference becomes a file."""
    from . import zoo

    name = zoo.pretrained_name(reference)
    return zoo.resolve(name) if name is not None else Path(reference)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write atomically; ``payload`` holds at least model, state_dict, normalization, dataset.

    The file also stores ``content_sha256``, a digest of everything else in it: torch's zip reader
    checks no CRC, so without it a flipped bit in a weight would load silently as a different model.
    """
    for key in ("model", "state_dict", "normalization", "dataset"):
        if key not in payload:
            raise ValueError(f"checkpoint payload lacks {key!r}")
    content = {"format": FORMAT, "version": VERSION, **payload}
    content.pop(DIGEST_KEY, None)
    torch_save_atomic({**content, DIGEST_KEY: content_digest(content)}, path)


def content_digest(obj: Any) -> str:
    """sha256 of a nested structure of dicts, lists, tensors and plain values, independent of how
    torch.save lays it out in the file (tensor bytes, dtypes and shapes; dict keys in sorted order)."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                feed(key)
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            # Subclasses (torch's TorchVersion str, IntEnum) read back as their base type: hash that.
            base = next((kind for kind in (bool, int, float, str, bytes) if isinstance(value, kind)), None)
            if base is not None:
                value = base(value)
            digest.update(f"V{type(value).__name__}:{value!r};".encode())

    feed(obj)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate the raw checkpoint dict (safe: weights_only).

    Beyond the format tag, the fields every stage reads are checked for type, so a crafted or damaged
    file fails here with a message instead of deep inside a later stage.
    """
    raw = torch_load_safe(path, "checkpoint")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnet-deploy checkpoint (no '{FORMAT}' format tag)")
    version = raw.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path} was written by a newer resnet-deploy (format version {version!r})")
    problems = []
    if not isinstance(raw.get("model"), dict) or not isinstance(raw["model"].get("name"), str):
        problems.append("'model' is not a model spec")
    elif not isinstance(raw["model"].get("num_classes"), int) or isinstance(raw["model"].get("num_classes"), bool):
        problems.append("'model.num_classes' is not an integer")
    state_dict = raw.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        problems.append("'state_dict' is not a dict of tensors")
    if not _valid_normalization(raw.get("normalization")):
        problems.append("'normalization' is not {mean: 3 numbers, std: 3 positive numbers}")
    if not isinstance(raw.get("dataset"), dict):
        problems.append("'dataset' is not a dict")
    if problems:
        raise UserError(f"checkpoint {path} is malformed: {'; '.join(problems)}")
    stored = raw.get(DIGEST_KEY)  # absent in checkpoints written before it was added, or by hand
    if stored is not None and stored != content_digest({k: v for k, v in raw.items() if k != DIGEST_KEY}):
        raise UserError(
            f"checkpoint {path} is corrupt: its content does not match the digest stored in it "
            "(a damaged copy or a flipped bit)",
            hint="use another copy, or the run's last.pt/best.pt",
        )
    return raw


def _valid_normalization(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        mean = [float(v) for v in value["mean"]]
        std = [float(v) for v in value["std"]]
    except (KeyError, TypeError, ValueError):
        return False
    return len(mean) == len(std) == 3 and all(math.isfinite(v) for v in mean + std) and all(v > 0 for v in std)


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint in eval mode, checking the weights fit the architecture."""
    path = Path(path)
    raw = read_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(raw["model"])
    except TypeError as exc:
        raise UserError(f"checkpoint {path} has a malformed model spec {raw['model']!r}") from exc
    # Build on the meta device first (no memory) and compare names and shapes, so a crafted spec
    # (say 10**9 classes) is refused before a single byte is allocated for it.
    with torch.device("meta"):
        skeleton = build_model(spec)
    expected = skeleton.state_dict()
    missing, unexpected = _compare_keys(expected, raw["state_dict"])
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match model {spec.name}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights (e.g. {(missing + unexpected)[:3]})"
        )
    for key, tensor in raw["state_dict"].items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"checkpoint {path} does not fit model {spec.display_name} with {spec.num_classes} classes: "
                f"{key} has shape {tuple(tensor.shape)}, the model needs {tuple(expected[key].shape)}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"checkpoint {path} holds NaN or infinite values in {key} (a diverged training run?)")
    model = build_model(spec)
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit model {spec.name}: {str(exc).splitlines()[-1].strip()}") from exc
    model.to(device).eval()
    return LoadedModel(
        model=model,
        spec=spec,
        normalization=Normalization.from_dict(raw["normalization"]),
        classes=list(raw["dataset"].get("classes", [])),
        path=path,
        sha256=sha256_file(path),
        raw=raw,
    )


def _compare_keys(expected: dict, found: dict) -> tuple[list[str], list[str]]:
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    return missing, unexpected


def check_dataset_matches(loaded: LoadedModel, classes: list[str], dataset_name: str) -> None:
    """Refuse to evaluate a checkpoint on a dataset with other classes (wrong head, wrong labels)."""
    if loaded.spec.num_classes != len(classes):
        raise UserError(
            f"checkpoint {loaded.path} has {loaded.spec.num_classes} classes but dataset {dataset_name} has {len(classes)}"
        )
    if loaded.classes and loaded.classes != classes:
        raise UserError(f"checkpoint {loaded.path} was trained on classes {loaded.classes[:4]}..., not {dataset_name}'s")
