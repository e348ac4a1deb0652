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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import Normalization
from .errors import UserError
from .fileio import sha256_file, torch_load_safe, torch_save_atomic
from .models import CifarResNet, ModelSpec, build_model
from .validation import is_dict_list, is_int, is_number, is_str_list, model_spec_problems, normalization_ok

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


def checkpoint_argument(reference: str) -> Path:
    """:func:`resolve_checkpoint` as an argparse ``type=`` (the benchmarks/ scripts' checkpoint options):
    argparse turns only ValueError/TypeError/ArgumentTypeError into a usage error, so a reference that
    cannot be resolved (an unknown ``pretrained:NAME``, a shipped file failing its hash check) would
    otherwise end the script with a traceback; this way it exits 2 with the message."""
    import argparse

    try:
        return resolve_checkpoint(reference)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
    problems = model_spec_problems(raw.get("model"))
    state_dict = raw.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided for k, v in state_dict.items()
    ):
        problems.append("'state_dict' is not a dict of tensors")
    if not normalization_ok(raw.get("normalization")):
        problems.append("'normalization' is not {mean: 3 numbers, std: 3 positive numbers}")
    dataset = raw.get("dataset")
    if not isinstance(dataset, dict):
        problems.append("'dataset' is not a dict")
    else:
        if "classes" in dataset and not is_str_list(dataset["classes"]):
            problems.append("'dataset.classes' is not a list of class names")
        if not isinstance(dataset.get("name", ""), str):
            problems.append("'dataset.name' is not a string")
    problems += _training_state_problems(raw)
    if problems:
        raise UserError(f"checkpoint {path} is malformed: {'; '.join(problems)}")
    stored = raw.get(DIGEST_KEY)  # absent in checkpoints written before it was added, or by hand
    if stored is not None and stored != content_digest({k: v for k, v in raw.items() if k != DIGEST_KEY}):
        raise UserError(
            f"checkpoint {path} is corrupt: its content does not match the digest stored in it "
            "(a damaged copy or a flipped bit)",
            hint="use another copy, or the run's last.pt/best.pt",
        )
    _check_weights_fit(raw, path)
    return raw


def _check_weights_fit(raw: dict, path: str | os.PathLike) -> ModelSpec:
    """The weights must be those of the model the spec names: same names, shapes and kind of dtype,
    all finite. The model is built on the meta device (no memory), so a crafted spec (say 10**9
    classes) is refused before a single byte is allocated for it; ``--resume`` reads checkpoints
    through here too, so its ``load_state_dict`` never meets weights that do not fit."""
    spec = ModelSpec.from_dict(raw["model"])
    try:
        with torch.device("meta"):
            skeleton = build_model(spec)
    except (RuntimeError, ValueError, OverflowError, TypeError) as exc:
        raise UserError(f"checkpoint {path} has a model spec no model can be built from ({raw['model']!r}): {exc}") from exc
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
        if tensor.is_complex() or tensor.is_floating_point() != expected[key].is_floating_point():
            raise UserError(f"checkpoint {path}: {key} is a {tensor.dtype} tensor, the model needs {expected[key].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"checkpoint {path} holds NaN or infinite values in {key} (a diverged training run?)")
    return spec


def _training_state_problems(raw: dict) -> list[str]:
    """The training state ``--resume`` reads, when present: counters, history and the config. A crafted
    or damaged one is refused here, with the field named, not deep inside the resumed run."""
    problems = []
    for key in ("epoch", "step"):
        if key in raw and not is_int(raw[key], 0):
            problems.append(f"'{key}' is not a whole number >= 0")
    for key in ("optimizer", "scheduler", "scaler", "partial"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            problems.append(f"'{key}' is not a dict")
    if "history" in raw and not is_dict_list(raw["history"]):
        problems.append("'history' is not a list of per-epoch records")
    if not is_number(raw.get("best_accuracy", 0.0)):
        problems.append("'best_accuracy' is not a finite number")
    if "train_config" in raw:
        problem = _train_config_problem(raw["train_config"])
        if problem:
            problems.append(problem)
    return problems


def _train_config_problem(config: Any) -> str | None:
    from .train_config import TrainConfig

    if not isinstance(config, dict) or not all(isinstance(key, str) for key in config):
        return "'train_config' is not a dict"
    try:
        TrainConfig.from_dict(config).validate()
    except (UserError, TypeError, ValueError) as exc:
        return f"'train_config' is not a valid training configuration ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint in eval mode, checking the weights fit the architecture."""
    path = Path(path)
    raw = read_checkpoint(path)  # validated: fields, digest, and weights that fit the spec
    spec = ModelSpec.from_dict(raw["model"])
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
