"""Reading sources from elsewhere, member by member, in memory: tar and zip archives and folders.

Nothing is extracted to disk. Absolute paths, ``..``, links, device files, FIFOs and declared sizes
past the limits refuse the whole source."""

from __future__ import annotations

import lzma
import os
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")

# Limits for archives from elsewhere: CIFAR-sized data is ~200 MB decoded; a declared size far past
# that is a decompression bomb or the wrong file. Override with RESNET_DEPLOY_MAX_ARCHIVE_BYTES (read
# when an archive is read, not at import: a bad value must be a message, not a traceback on every command).
MAX_ARCHIVE_BYTES = 4 << 30
MAX_ARCHIVE_BYTES_ENV = "RESNET_DEPLOY_MAX_ARCHIVE_BYTES"
MAX_MEMBER_BYTES = 64 << 20
MAX_MEMBERS = 2_000_000


# What the tar/zip/gzip/xz/bz2 readers raise on a truncated or corrupt archive (a partial download is
# the usual cause). RuntimeError: an encrypted zip member; NotImplementedError: an unknown compression.
_CORRUPT_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    OSError,
    lzma.LZMAError,
    zlib.error,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


def max_archive_bytes() -> int:
    """The total declared size an archive may have: $RESNET_DEPLOY_MAX_ARCHIVE_BYTES (a positive whole
    number of bytes; ``_`` separators allowed), else ``MAX_ARCHIVE_BYTES``."""
    value = os.environ.get(MAX_ARCHIVE_BYTES_ENV, "").strip()
    if not value:
        return MAX_ARCHIVE_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = None
    if limit is None or limit <= 0:
        raise UserError(
            f"environment variable {MAX_ARCHIVE_BYTES_ENV}={value!r} is not a positive whole number of bytes",
            hint=f"e.g. {MAX_ARCHIVE_BYTES_ENV}={8 << 30} for 8 GiB, or unset it for the default ({MAX_ARCHIVE_BYTES >> 30} GiB)",
        )
    return limit


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    """Refuse member names that would escape an extraction directory."""
    member = PurePosixPath(name)
    if member.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"archive {archive} was refused: member {name!r} has an absolute path")
    if ".." in member.parts or "\\" in name:
        raise UserError(f"archive {archive} was refused: member {name!r} points outside the archive")
    return member


def _archive_members(archive: Path) -> Iterator[tuple[PurePosixPath, "callable"]]:
    """Yield (path, read) for every regular file of a tar or zip archive, after safety checks.

    Links, device files and FIFOs refuse the whole archive; so do declared sizes past the limits.
    """
    declared_total = 0
    count = 0
    limit = max_archive_bytes()

    def account(name: str, size: int) -> None:
        nonlocal declared_total, count
        declared_total += size
        count += 1
        if size > MAX_MEMBER_BYTES or declared_total > limit or count > MAX_MEMBERS:
            raise UserError(
                f"archive {archive} was refused: its contents exceed the size limit "
                f"({limit / 2**30:.1f} GiB in all, {MAX_MEMBER_BYTES >> 20} MiB a file, {MAX_MEMBERS} files) "
                f"at member {name!r} (a decompression bomb or the wrong file)",
                hint="raise RESNET_DEPLOY_MAX_ARCHIVE_BYTES if the archive is genuine",
            )

    if not archive.is_file():
        raise UserError(f"archive not found: {archive}")
    if archive.name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(archive)
        except _CORRUPT_ARCHIVE_ERRORS as exc:
            raise UserError(f"{archive} is not a valid zip archive: {exc}") from exc
        with zf:
            for info in zf.infolist():
                member = _check_member_name(info.filename, archive)
                mode = (info.external_attr >> 16) & 0o170000
                if mode and mode not in (0o100000, 0o040000):
                    raise UserError(f"archive {archive} was refused: member {info.filename!r} is a link or special file")
                if info.is_dir():
                    continue
                if info.flag_bits & 0x1:
                    raise UserError(f"archive {archive} was refused: member {info.filename!r} is encrypted")
                account(info.filename, info.file_size)
                yield member, (lambda info=info: _bounded_read(lambda: zf.open(info), info.file_size, archive, info.filename))
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except _CORRUPT_ARCHIVE_ERRORS as exc:
        raise UserError(f"{archive} is not a readable tar archive: {exc}") from exc
    with tf:
        try:
            for info in tf:
                member = _check_member_name(info.name, archive)
                if info.isdir():
                    continue
                if not info.isreg():
                    kind = "link" if (info.issym() or info.islnk()) else "device or special file"
                    raise UserError(f"archive {archive} was refused: member {info.name!r} is a {kind}")
                account(info.name, info.size)
                yield member, (lambda info=info: _bounded_read(lambda: tf.extractfile(info), info.size, archive, info.name))
        except _CORRUPT_ARCHIVE_ERRORS as exc:
            raise UserError(f"{archive} is corrupt or truncated: {exc}") from exc


def _bounded_read(open_member, declared: int, archive: Path, name: str) -> bytes:
    """Read one member, never more than it declares; decoder errors become a clear message.

    Members are read by the caller between iterations, outside the iteration's own error handling,
    so a truncated or corrupt archive must be caught here too.
    """
    try:
        with open_member() as handle:
            data = handle.read(declared + 1)
    except _CORRUPT_ARCHIVE_ERRORS as exc:
        raise UserError(f"{archive} is corrupt or truncated (at member {name!r}): {exc}") from exc
    if len(data) > declared:
        raise UserError(f"archive {archive} was refused: member {name!r} is larger than it declares")
    return data


def _folder_members(root: Path) -> Iterator[tuple[PurePosixPath, "callable"]]:
    def read(file: Path) -> bytes:
        try:
            if file.stat().st_size > MAX_MEMBER_BYTES:
                raise UserError(f"data dir {root} was refused: {file} is larger than {MAX_MEMBER_BYTES >> 20} MiB")
            return file.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc.strerror or exc}") from exc

    try:
        files = sorted(root.rglob("*"))
    except OSError as exc:
        raise UserError(f"cannot list data dir {root}: {exc.strerror or exc}") from exc
    for file in files:
        if file.is_symlink():
            raise UserError(f"data dir {root} was refused: {file} is a symbolic link")
        if file.is_file():
            yield PurePosixPath(file.relative_to(root).as_posix()), (lambda file=file: read(file))
        elif not file.is_dir():  # reading a FIFO would block forever, a device could be endless
            raise UserError(f"data dir {root} was refused: {file} is a device file, FIFO or socket")
