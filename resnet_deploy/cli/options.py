"""Options several commands share, so each is spelled and validated once."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

import click

from ..data import DATASET_NAMES, ImageDataset, load_dataset


def dataset_options(func: Callable) -> Callable:
    """--dataset, --data-dir, --download, --cache-dir, --train-subset, --test-subset."""

    @click.option(
        "--dataset",
        type=click.Choice(DATASET_NAMES, case_sensitive=False),
        default="cifar10",
        show_default=True,
        help="cifar10/cifar100 (official archives, or for cifar10 an ImageFolder tree/archive), "
        "imagefolder (train/<class>/*, test/<class>/*), or synthetic (for smoke runs).",
    )
    @click.option(
        "--data-dir",
        type=click.Path(path_type=str),
        envvar="RESNET_DEPLOY_DATA",
        help="Folder or archive holding the dataset [env RESNET_DEPLOY_DATA].",
    )
    @click.option("--download", is_flag=True, help="Fetch CIFAR from the official site (needs internet).")
    @click.option("--cache-dir", type=click.Path(path_type=str), help="Where decoded arrays are cached [~/.cache/resnet-deploy].")
    @click.option("--train-subset", type=click.IntRange(min=1), help="Use N training images (seeded), for quick runs.")
    @click.option("--test-subset", type=click.IntRange(min=1), help="Use N test images (seeded), for quick runs.")
    @functools.wraps(func)
    def wrapper(*args, dataset, data_dir, download, cache_dir, train_subset, test_subset, **kwargs):
        def loader() -> ImageDataset:
            loaded = load_dataset(dataset, data_dir, download=download, cache_dir=cache_dir)
            if train_subset or test_subset:
                loaded = loaded.subset(train_subset, test_subset)
            return loaded

        return func(*args, load_data=loader, **kwargs)

    return wrapper


class CheckpointType(click.ParamType):
    """A checkpoint file, or ``pretrained:NAME`` (a shipped model, its sha256 verified), as a Path.

    Resolved while the command line is parsed, so the command and everything it records (run names,
    manifests, checkpoint sha256) see the real file. Existence is left to the stage, which says more.
    """

    name = "checkpoint"

    def convert(self, value, param, ctx) -> Path:
        from ..checkpoint import resolve_checkpoint

        return resolve_checkpoint(value)


CHECKPOINT = CheckpointType()


def parse_int_list(text: str, option: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; a clear error naming the option otherwise."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))
