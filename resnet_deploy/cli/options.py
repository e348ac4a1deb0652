"""Options several commands share, so each is spelled and validated once."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import click

from ..data import DATASET_NAMES, ImageDataset, load_dataset
from ..errors import UserError

DATA_ENV = "RESNET_DEPLOY_DATA"  # where the dataset is when --data-dir is not given


def default_of(cls: type, name: str):
    """The default of dataclass ``cls``'s field ``name`` (its default_factory called): an option reads
    it there, so that the library's default is the one definition and the CLI repeats none."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def dataset_options(func: Callable) -> Callable:
    """--dataset, --data-dir (default: $RESNET_DEPLOY_DATA), --download, --cache-dir, --train-subset,
    --test-subset, given to the command as ``load_data``: a callable that loads the dataset, with
    ``load_data.check()`` to refuse a missing data location before any work."""

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
        envvar=DATA_ENV,
        help=f"Folder or archive holding the dataset. Not given: ${DATA_ENV}, so after "
        f"`export {DATA_ENV}=../shared/datasets/cifar10-jpeg.tar.xz` no command needs --data-dir.",
    )
    @click.option("--download", is_flag=True, help="Fetch CIFAR from the official site into --data-dir (needs internet).")
    @click.option("--cache-dir", type=click.Path(path_type=str), help="Where decoded arrays are cached [~/.cache/resnet-deploy].")
    @click.option("--train-subset", type=click.IntRange(min=1), help="Use N training images (seeded), for quick runs.")
    @click.option("--test-subset", type=click.IntRange(min=1), help="Use N test images (seeded), for quick runs.")
    @functools.wraps(func)
    def wrapper(*args, dataset, data_dir, download, cache_dir, train_subset, test_subset, **kwargs):
        def loader() -> ImageDataset:
            loader.check()
            loaded = load_dataset(dataset, data_dir, download=download, cache_dir=cache_dir)
            if train_subset or test_subset:
                loaded = loaded.subset(train_subset, test_subset)
            return loaded

        def check() -> None:
            """Refuse a missing data location now, before a command creates folders or trains."""
            if data_dir is None and dataset.lower() != "synthetic":
                raise UserError(
                    f"--dataset {dataset.lower()} needs --data-dir (a folder or archive holding it), or {DATA_ENV} set to one",
                    hint=f"export {DATA_ENV}=../shared/datasets/cifar10-jpeg.tar.xz once, or --dataset synthetic for a smoke run",
                )

        loader.check = check  # type: ignore[attr-defined]
        return func(*args, load_data=loader, **kwargs)

    return wrapper


@contextlib.contextmanager
def no_empty_folders_left(*directories: str | os.PathLike | None) -> Iterator[None]:
    """If the command fails, remove the folders among ``directories`` (and their parents) that it
    created and that are still empty: a refused command leaves nothing behind.

    Only folders that did not exist when the block started are candidates, and ``os.rmdir`` removes
    only empty ones, so nothing anyone wrote is ever touched.
    """
    created: list[list[Path]] = []
    for directory in directories:
        if directory is None:
            continue
        chain, path = [], Path(directory)
        while not path.exists() and not path.is_symlink() and path != path.parent:
            chain.append(path)  # deepest first
            path = path.parent
        created.append(chain)
    try:
        yield
    except BaseException:
        for chain in created:
            for path in chain:
                try:
                    os.rmdir(path)
                except FileNotFoundError:  # never created (or already removed): its parent may still be
                    continue
                except OSError:  # not empty (something was written) or not ours to remove
                    break
        raise


def force_option(func: Callable | None = None, *, what: str = "the output folder") -> Callable:
    """``--force``: overwrite ``what`` when it holds artifacts made from other inputs (see
    ``overwrite_guard.refuse_overwrite``); a re-run on the same inputs never needs it."""
    if func is None:
        return lambda f: force_option(f, what=what)
    return click.option(
        "--force", is_flag=True,
        help=f"Overwrite {what} when it holds artifacts made from other inputs (refused otherwise, exit 2). "
        "A re-run on the same inputs overwrites without it.",
    )(func)


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
