"""Not overwriting a folder of another run's artifacts: a stage's output folder whose record
(config.json, manifest.json, results.json) says it was made from other inputs is refused (UserError,
exit 2, naming ``--force``) unless forced; a re-run on the same inputs overwrites.

Click-free, so the CLI (train, quantize, export) and the library (``bench.benchmark_artifacts``, which
hashes the checkpoint it benches once, for both the guard and the results) both check here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import UserError

if TYPE_CHECKING:
    from .data import ImageDataset


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
