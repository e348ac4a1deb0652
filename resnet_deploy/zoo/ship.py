"""Ship a finished training run into the zoo: strip it, measure it, hash it, register it.

Used by ``scripts/ship_model.py``. Every figure in a registry entry is measured or read from the run
here (top-1, epochs, wall time, versions); nothing is typed in by hand.
"""

from __future__ import annotations

import datetime
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import CHECKPOINT_DIR, read_registry, write_registry, zoo_dir
from ..checkpoint import check_dataset_matches, load_checkpoint, save_checkpoint
from ..environment import cpu_model
from ..errors import UserError
from ..evaluation import classification_metrics, predict_logits
from ..fileio import sha256_bytes, sha256_file

# What a shipped checkpoint keeps: the model and how to feed it, plus the recipe (train_config) and the
# per-epoch history (small, and what the plain-vs-residual curves are drawn from). Optimizer, scheduler,
# scaler, partial-epoch and best-accuracy state exist only to resume training and are dropped.
SHIPPED_KEYS = ("model", "state_dict", "normalization", "dataset", "epoch", "train_config", "history", "torch_version")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def stripped_checkpoint(raw: dict, source: Path) -> dict[str, Any]:
    """The shippable part of a finished run's checkpoint; a run stopped early is refused."""
    planned = raw.get("train_config", {}).get("epochs")
    if raw.get("step", 0) or raw.get("epoch") != planned:
        raise UserError(
            f"{source} stopped at epoch {raw.get('epoch')} (batch {raw.get('step', 0)}) of {planned}: ship a finished run",
            hint="finish it with: resnet-deploy train ... --resume",
        )
    return {key: raw[key] for key in SHIPPED_KEYS if key in raw}


def correct_count(metrics: dict) -> int:
    """Images classified right, from classification_metrics' top-1 percent and count."""
    return round(metrics["top1"] * metrics["count"] / 100)


def measure_top1(checkpoint: Path, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    """FP32 top-1 of a checkpoint file on CPU (deterministic: no autocast, fixed batches)."""
    loaded = load_checkpoint(checkpoint)
    logits = predict_logits(loaded.model, images, loaded.normalization, batch_size)
    metrics = classification_metrics(logits, labels)
    correct = correct_count(metrics)
    # the percent from the integer count: exact in the registry, without float32 noise in its last digits
    return {"top1": 100 * correct / metrics["count"], "correct": correct, "images": metrics["count"]}


def fixed_subset(dataset, size: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The fixed test subset: ``size`` test images, every (test size // size)-th one, so that every
    class is in it even where the split is stored sorted by class (ImageFolder copies such as the
    shared CIFAR-10 are). Returns images, labels and the definition the registry keeps, whose hashes
    tell a changed data copy apart from a changed model when a re-measured figure differs."""
    if not 0 < size <= len(dataset.test_images):
        raise UserError(f"--subset-size must be 1..{len(dataset.test_images)}, got {size}")
    step = len(dataset.test_images) // size
    images, labels = dataset.test_images[: step * size : step], dataset.test_labels[: step * size : step]
    definition = {
        "split": "test",
        "size": size,
        "step": step,
        "images_sha256": sha256_bytes(np.ascontiguousarray(images).tobytes()),
        "labels_sha256": sha256_bytes(np.ascontiguousarray(labels).tobytes()),
    }
    return images, labels, definition


def training_command(recipe: dict, data_dir: str | None, output: Path) -> str:
    """The ``resnet-deploy train`` command line that reproduces ``recipe``.

    Built from the train command's own options (every recipe field it has a flag for), so it parses
    back into the same settings; fields without a flag (such as eval_batch_size) are kept in the recipe.
    """
    import click

    from ..cli.train_commands import train

    options = {param.name.rstrip("_"): param for param in train.params if isinstance(param, click.Option)}
    words = ["resnet-deploy", "train"]
    for key, value in recipe.items():
        option = options.get(key)
        if option is None or value is None:
            continue
        flag = max(option.opts, key=len)
        if option.is_flag:
            # an on/off pair (--compile/--no-compile) may default to "auto": state False explicitly
            words += [flag] if value else option.secondary_opts[:1]
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    if data_dir:
        words += ["--data-dir", str(data_dir)]
    words += ["--output", str(output)]
    return shlex.join(words)


def ship_model(
    run_checkpoint: Path,
    name: str,
    dataset,
    *,
    data_dir: str | None,
    data_note: str | None,
    subset_size: int,
    eval_batch_size: int,
    directory: Path | None = None,
) -> dict[str, Any]:
    """Write ``directory/checkpoints/NAME.pt`` from a finished run, measure it and (re)register it."""
    if not NAME_PATTERN.match(name):
        raise UserError(f"--name {name!r} must be letters, digits, '.', '_' or '-'")
    directory = directory or zoo_dir()
    run = load_checkpoint(run_checkpoint)  # validated (digest, weights fit the spec) before anything is written
    check_dataset_matches(run, dataset.classes, dataset.name)
    raw = run.raw
    subset_images, subset_labels, subset = fixed_subset(dataset, subset_size)
    target = directory / CHECKPOINT_DIR / f"{name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target, stripped_checkpoint(raw, run_checkpoint))
    entry = {
        "name": name,
        "file": f"{CHECKPOINT_DIR}/{target.name}",
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "model": raw["model"],
        "dataset": _dataset_entry(raw["dataset"], data_dir, data_note),
        "top1_full": measure_top1(target, dataset.test_images, dataset.test_labels, eval_batch_size),
        "top1_subset": {
            **measure_top1(target, subset_images, subset_labels, eval_batch_size),
            "subset": subset,
        },
        "eval": _eval_conditions(eval_batch_size),
        "epochs": raw["epoch"],
        "train_wall_time_s": round(sum(row.get("epoch_time_s", 0.0) for row in raw.get("history", [])), 1),
        "recipe": raw["train_config"],
        "command": training_command(raw["train_config"], data_dir, run_checkpoint.parent),
        "trained_with_torch": str(raw.get("torch_version", "")),
        "shipped_from": {"path": str(run_checkpoint), "sha256": sha256_file(run_checkpoint)},
        "shipped_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    registry = read_registry(directory)
    registry["models"][name] = entry
    write_registry(registry, directory)
    return entry


def _dataset_entry(recorded: dict, data_dir: str | None, note: str | None) -> dict[str, Any]:
    entry = {key: recorded.get(key) for key in ("name", "train_size", "test_size", "source")}
    if data_dir and Path(data_dir).is_file():
        entry["archive_sha256"] = sha256_file(data_dir)
    if note:
        entry["note"] = note
    return entry


def _eval_conditions(batch_size: int) -> dict[str, Any]:
    """How the figures were measured: FP32 on CPU is deterministic for a given batch size and kernel set."""
    return {
        "precision": "fp32",
        "device": "cpu",
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "cpu": cpu_model(),
    }
