"""Run names: the one folder name a stage writes its run under (``calibration/NAME``, ``exports/NAME``,
``OUTPUT_ROOT/NAME`` of bench, the pipeline's ``runs/NAME`` and the rest), and the defaults taken from
a checkpoint's path when none is given.

Torch-free and click-free: the CLI and the library (``pipeline.py``, ``export/run.py``) both check
names here, so a name refused by one is refused by all with the same message (``UserError``, exit 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError

# export's own, stricter rule (as it always was); bench, quantize and the pipeline take any plain folder name.
EXPORT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TRAINING_FILES = ("best", "last")  # train writes runs/<run>/best.pt and last.pt: the folder names the run
GENERIC_FOLDERS = (".", "runs", "checkpoints")  # folders that name no run (the zoo keeps checkpoints/<model>.pt)


def check_run_name(name: str | None, option: str = "--name") -> str:
    """``name`` if it is one folder name (not empty, no ``/``, not ``.`` or ``..``), else a UserError
    naming ``option``."""
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"{option} must be a plain folder name, got {name!r}")
    return name


def check_export_name(name: str) -> str:
    """``name`` if export accepts it as its folder name (letters, digits, '.', '_', '-')."""
    if not EXPORT_NAME_PATTERN.match(name):
        raise UserError(f"--name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a folder name)")
    return name


def _folder_or_stem(checkpoint: Path, folder_names_run: bool) -> str:
    """The checkpoint's folder name when it names the run (and there is one), else the file's stem."""
    return checkpoint.parent.name if folder_names_run and checkpoint.parent.name else checkpoint.stem


def quantize_run_name(checkpoint: str | os.PathLike, target: str, qat: bool) -> str:
    """``runs/r20/best.pt`` -> ``r20-tensorrt`` (``-qat`` added for QAT); ``checkpoints/r20.pt`` -> ``r20-tensorrt``.
    The folder names the run only for train's own file names (best.pt, last.pt)."""
    path = Path(checkpoint)
    base = _folder_or_stem(path, path.stem in TRAINING_FILES)
    return f"{base or 'model'}-{target}{'-qat' if qat else ''}"


def export_run_name(checkpoint: str | os.PathLike, spec_name: str) -> str:
    """``runs/r20/best.pt`` -> ``r20``; a checkpoint in a folder that names no run -> its stem, or
    ``spec_name`` when nothing usable is left. Made to pass ``check_export_name``.
    The folder names the run unless it is a generic one (whatever the file is called)."""
    path = Path(checkpoint).resolve()
    candidate = _folder_or_stem(path, path.parent.name not in GENERIC_FOLDERS)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", candidate).strip("-.") or spec_name
