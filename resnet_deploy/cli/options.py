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
    :func:`refuse_overwrite`); a re-run on the same inputs never needs it."""
    if func is None:
        return lambda f: force_option(f, what=what)
    return click.option(
        "--force", is_flag=True,
        help=f"Overwrite {what} when it holds artifacts made from other inputs (refused otherwise, exit 2). "
        "A re-run on the same inputs overwrites without it.",
    )(func)


def refuse_overwrite(
    directory: str | os.PathLike, record: str, differences: Callable[[dict], list[str]], *, what: str, force: bool, instead: str
) -> None:
    """Exit 2 when ``directory`` holds ``what`` that its ``record`` (config.json, manifest.json) says
    was made from other inputs than this command's, unless ``force``.

    ``differences(recorded)`` names each input that differs; none means a re-run on the same inputs,
    which may overwrite (a command repeated, a resumed run). A folder without the record has nothing
    finished to protect (new, or a run killed before its record was written); an unreadable record
    is refused, as nothing then says whose the artifacts are. ``instead``: the other ways out, named
    in the message after --force.
    """
    path = Path(directory) / record
    if force or not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        recorded = None
    found = differences(recorded) if isinstance(recorded, dict) else [f"its {record} cannot be read"]
    if found:
        raise UserError(f"{directory} holds {what} made from other inputs ({'; '.join(found)}): add --force to overwrite it, or {instead}")


def checkpoint_differences(checkpoint: str | os.PathLike, sha256: str) -> Callable[[dict], list[str]]:
    """For :func:`refuse_overwrite`: an artifact whose record's ``checkpoint.sha256`` is not ``sha256``
    was made from another checkpoint."""

    def differences(recorded: dict) -> list[str]:
        made_from = recorded.get("checkpoint") if isinstance(recorded.get("checkpoint"), dict) else {}
        if made_from.get("sha256") == sha256:
            return []
        theirs = str(made_from.get("sha256") or "unknown")[:12]
        return [f"checkpoint {made_from.get('path', '?')} (sha256 {theirs}), not {checkpoint} ({sha256[:12]})"]

    return differences


def results_differences(checkpoint: str | os.PathLike, sha256: str, dataset: ImageDataset) -> Callable[[dict], list[str]]:
    """For :func:`refuse_overwrite` on a bench's results.json: results of another checkpoint (its
    ``model.checkpoint.sha256``) or of another test set (``dataset`` name and size). Which exports,
    artifacts, backends or settings were benched is not compared: they measure the same model again."""
    of_checkpoint = checkpoint_differences(checkpoint, sha256)
    ours = {"name": dataset.name, "size": int(len(dataset.test_images))}

    def differences(recorded: dict) -> list[str]:
        model = recorded.get("model") if isinstance(recorded.get("model"), dict) else {}
        theirs = recorded.get("dataset") if isinstance(recorded.get("dataset"), dict) else {}
        return of_checkpoint(model) + [f"test set {key} {theirs.get(key)!r}, not {value!r}" for key, value in ours.items() if theirs.get(key) != value]

    return differences


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
