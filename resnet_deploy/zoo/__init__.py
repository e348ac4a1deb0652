"""The shipped pretrained models: checkpoints that install with the package, listed in one registry.

``registry.json`` holds one entry per model: its file under ``checkpoints/``, that file's sha256, the
model spec, the dataset, top-1 on the full test split and on a fixed subset (both measured by
``scripts/ship_model.py``), the recipe and the command that trained it. Every command that takes a
checkpoint path also takes ``pretrained:NAME``; ``resolve`` checks the file's sha256 against the
registry before anything reads it. Nothing here touches the network.

The zoo is this package's folder; ``RESNET_DEPLOY_ZOO`` names another one (tests, a private zoo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import read_json, sha256_file, write_json
from ..validation import Fields, is_file_name, is_int, is_number, is_sha256, model_spec_problems

PREFIX = "pretrained:"
ZOO_ENV = "RESNET_DEPLOY_ZOO"
REGISTRY_FILE = "registry.json"
# "checkpoints" is a folder name export's default run name skips, so an export of resnet20.pt is named "resnet20".
CHECKPOINT_DIR = "checkpoints"
FORMAT = "resnet-deploy/zoo"
VERSION = 1


def zoo_dir() -> Path:
    """The folder holding registry.json and checkpoints/: $RESNET_DEPLOY_ZOO, else the installed package's."""
    override = os.environ.get(ZOO_ENV)
    return Path(override) if override else Path(__file__).resolve().parent


def pretrained_name(reference: str | os.PathLike) -> str | None:
    """``pretrained:resnet20`` -> ``resnet20``; a file path -> None."""
    text = os.fspath(reference)
    return text[len(PREFIX):] if text.startswith(PREFIX) else None


def read_registry(directory: Path | None = None) -> dict[str, Any]:
    """The registry of ``directory`` (default: ``zoo_dir()``); a zoo without one holds no models."""
    path = (directory or zoo_dir()) / REGISTRY_FILE
    if not path.is_file():
        return {"format": FORMAT, "version": VERSION, "models": {}}
    registry = read_json(path, "pretrained-model registry")
    if not isinstance(registry, dict) or registry.get("format") != FORMAT or not isinstance(registry.get("models"), dict):
        raise UserError(f"{path} is not a resnet-deploy model registry (no '{FORMAT}' format tag)")
    _validate_entries(registry["models"], path)
    return registry


def _validate_entries(models: dict, path: Path) -> None:
    """Each entry's fields that ``resolve``, ``models`` and ``pipeline`` read: a hand-edited registry (or
    one named by $RESNET_DEPLOY_ZOO) is refused naming the field, and its files must lie inside the zoo."""
    fields = Fields(f"model registry {path}", hint=f"re-ship the model with scripts/ship_model.py, or unset {ZOO_ENV}")
    for name, entry in models.items():
        if not fields.check(isinstance(entry, dict), f"models.{name}", "an object"):
            continue
        fields.check(entry.get("name") == name, f"models.{name}.name", f"{name!r} (its key)")
        fields.check(is_file_name(entry.get("file")), f"models.{name}.file", "a file name inside the zoo folder")
        fields.check(is_sha256(entry.get("sha256")), f"models.{name}.sha256", "a sha256 hex digest")
        fields.add(model_spec_problems(entry.get("model"), f"models.{name}.model"))
        dataset, top1 = entry.get("dataset"), entry.get("top1_full")
        fields.check(isinstance(dataset, dict) and isinstance(dataset.get("name"), str), f"models.{name}.dataset", "an object with a name")
        fields.check(isinstance(top1, dict) and is_number(top1.get("top1")), f"models.{name}.top1_full", "an object with a top1 number")
        fields.check(is_int(entry.get("epochs"), 0), f"models.{name}.epochs", "a number of epochs")
    fields.raise_if_any()


def write_registry(registry: dict[str, Any], directory: Path | None = None) -> Path:
    path = (directory or zoo_dir()) / REGISTRY_FILE
    write_json(path, {"format": FORMAT, "version": VERSION, "models": dict(sorted(registry["models"].items()))})
    return path


def list_pretrained(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every shipped model's registry entry, sorted by name."""
    models = read_registry(directory)["models"]
    return [models[name] for name in sorted(models)]


def resolve(name: str, directory: Path | None = None) -> Path:
    """The checkpoint file of the shipped model ``name``, after checking its sha256 against the registry."""
    directory = directory or zoo_dir()
    models = read_registry(directory)["models"]
    if name not in models:
        raise UserError(
            f"unknown pretrained model {name!r}; shipped: {', '.join(sorted(models)) or 'none'}",
            hint="`resnet-deploy models` lists them; any command also takes a checkpoint file",
        )
    entry = models[name]  # validated by read_registry: "file" lies inside the zoo, "sha256" is a digest
    path = directory / entry["file"]
    if not path.is_file():
        raise UserError(f"{PREFIX}{name}: its file {path} is missing", hint="reinstall resnet-deploy")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise UserError(
            f"{PREFIX}{name} failed its hash check: {path} has sha256 {actual[:12]}..., "
            f"the registry records {entry['sha256'][:12]}... (a modified or damaged file)",
            hint="reinstall resnet-deploy, or re-ship the model with scripts/ship_model.py",
        )
    return path
