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
    return registry


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
    entry = models[name]
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
