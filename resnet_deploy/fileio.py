"""File helpers every stage shares: atomic writes, hashing, safe loading of torch files, JSON.

Atomic means: write to a temporary file in the same directory, fsync it, rename it over the target,
fsync the directory. A kill at any moment leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError


_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux 4.7+: the
    ``Umask:`` line of /proc/self/status). Elsewhere it is set and restored, which another thread
    creating a file in between would see: there is no other portable way to read it."""
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # the strict mask meanwhile: a file made by another thread is private, not public
    os.umask(umask)
    return umask


# Errors of the file system, not of the program: shown as a clear message (exit 2), not a traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically.

    If the write fails (disk full, read-only or unwritable folder) the temporary file is removed, the
    previous ``target`` is left as it was, and a ``UserError`` names the file and the cause.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files; give what open() would
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        kept = " (the previous version is intact)" if target.exists() else ""
        raise UserError(f"could not write {target}: {exc.strerror or exc}{kept}") from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(directory: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files ``atomic_path`` left for ``names`` (None: for any file) in
    ``directory`` when a process was killed mid-write (kill -9, power loss), so repeated kills do not
    fill the disk. Call it only while no other process writes there."""
    removed = []
    patterns = [".*.tmp"] if names is None else [f".{glob.escape(name)}.*.tmp" for name in names]
    for pattern in patterns:
        for stale in Path(directory).glob(pattern):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed.append(stale)
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from exc


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def torch_save_atomic(obj: Any, target: str | os.PathLike) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(target, buffer.getvalue())


def torch_load_safe(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code.

    A file that holds anything else (a pickle that would import or call something) is refused, as is
    a file that is not a torch file at all or is cut short.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler raises this both for a pickle that names a global (a class or
        # function: the way pickles run code) and for bytes it cannot parse (a truncated file). Say which.
        named_global = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if named_global:
            raise UserError(
                f"{what} {path} was refused: it holds objects other than tensors and plain data "
                f"({named_global.group(1)}; loading it could run code)",
                hint="only load files from sources you trust; resnet-deploy never unpickles arbitrary objects",
            ) from exc
        detail = re.search(r"Unsupported operand \d+|[^\n]*truncated[^\n]*", str(exc))
        raise UserError(
            f"{what} {path} was refused: it is damaged or not a torch file of tensors and plain data"
            + (f" ({detail.group(0).strip()})" if detail else ""),
            hint="only load files from sources you trust; resnet-deploy never unpickles arbitrary objects",
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, IndexError, struct.error) as exc:
        # An empty file raises EOFError with no message: name the exception rather than index nothing.
        # A raw pickle cut short raises IndexError (an opcode popping an empty stack) or struct.error.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{what} {path} is corrupt or not a torch file: {reason}") from exc


def ensure_writable_dir(directory: str | os.PathLike, needed_bytes: int = 0, what: str = "output directory") -> Path:
    """Create ``directory`` and check up front that it is writable and has room for ``needed_bytes``."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"{what} {directory} is not writable: {exc.strerror or exc}") from exc
    if needed_bytes:
        free = shutil.disk_usage(directory).free
        if free < needed_bytes:
            raise UserError(
                f"{what} {directory} has {free / 2**20:.0f} MiB free, {needed_bytes / 2**20:.0f} MiB needed"
            )
    return directory


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap identity of a file for cache keys: path, size and modification time."""
    stat = Path(path).stat()
    return sha256_bytes(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())[:16]

