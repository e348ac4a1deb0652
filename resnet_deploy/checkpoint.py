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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Normalization
from .errors import UserError
from .fileio import sha256_file, torch_load_safe, torch_save_atomic
from .models import CifarResNet, ModelSpec, build_model

FORMAT = "resnet-deploy/checkpoint"
VERSION = 1


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


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write atomically; ``payload`` holds at least model, state_dict, normalization, dataset."""
    for key in ("model", "state_dict", "normalization", "dataset"):
        if key not in payload:
            raise ValueError(f"checkpoint payload lacks {key!r}")
    torch_save_atomic({"format": FORMAT, "version": VERSION, **payload}, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate the raw checkpoint dict (safe: weights_only)."""
    raw = torch_load_safe(path, "checkpoint")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnet-deploy checkpoint (no '{FORMAT}' format tag)")
    if raw.get("version", 0) > VERSION:
        raise UserError(f"{path} was written by a newer resnet-deploy (format version {raw['version']})")
    return raw


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint in eval mode, checking the weights fit the architecture."""
    path = Path(path)
    raw = read_checkpoint(path)
    spec = ModelSpec.from_dict(raw["model"])
    model = build_model(spec)
    missing, unexpected = _compare_keys(model.state_dict(), raw["state_dict"])
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match model {spec.name}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights (e.g. {(missing + unexpected)[:3]})"
        )
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
