"""The archive and CIFAR-pickle readers at their edges, called directly: a member exactly at the size
limit, the messages naming the archive and the limits, an endless member, a Python 2 CIFAR pickle.
(The CLI-level refusals are tests/test_reliability_files.py; these are the cases it does not reach.)"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import pytest

from resnet_deploy.data import archive as archive_module
from resnet_deploy.data import cache as cache_module
from resnet_deploy.data.archive import _archive_members, _bounded_read, _folder_members, max_archive_bytes
from resnet_deploy.data.cifar import _unpickle
from resnet_deploy.errors import UserError

from reliability_support import write_tar


def _tar(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    return write_tar(path, list(members.items()), extra, mode="w")


def _read_all(archive: Path) -> dict[str, bytes]:
    return {str(member): read() for member, read in _archive_members(archive)}


def test_a_member_exactly_at_the_size_limit_is_read_one_byte_over_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_MEMBER_BYTES", 100)
    at_limit = _tar(tmp_path / "at.tar", {"a/x.bin": b"x" * 100})
    assert _read_all(at_limit) == {"a/x.bin": b"x" * 100}
    over = _tar(tmp_path / "over.tar", {"a/x.bin": b"x" * 101})
    with pytest.raises(UserError, match=r"exceed the size limit \(.*\) at member 'a/x.bin'"):
        _read_all(over)


def test_size_limit_message_states_the_limits_in_gib_and_mib(tmp_path, monkeypatch):
    monkeypatch.setenv(archive_module.MAX_ARCHIVE_BYTES_ENV, str(3 << 29))  # 1.5 GiB
    monkeypatch.setattr(archive_module, "MAX_MEMBER_BYTES", 2 << 20)
    archive = _tar(tmp_path / "big.tar", {"a/x.bin": b"x" * ((2 << 20) + 1)})
    with pytest.raises(UserError) as refused:
        _read_all(archive)
    assert f"(1.5 GiB in all, 2 MiB a file, {archive_module.MAX_MEMBERS} files)" in str(refused.value)


def test_tar_refusals_name_the_archive_and_the_kind_of_member(tmp_path):
    outside = _tar(tmp_path / "dotdot.tar", {"a/../../escaped.bin": b"x"})
    with pytest.raises(UserError, match="points outside the archive") as refused:
        _read_all(outside)
    assert str(refused.value).startswith(f"archive {outside} was refused")
    fifo = tarfile.TarInfo("a/fifo")
    fifo.type = tarfile.FIFOTYPE
    special = _tar(tmp_path / "fifo.tar", {"a/x.bin": b"x"}, [fifo])
    with pytest.raises(UserError) as refused:
        _read_all(special)
    assert str(refused.value) == f"archive {special} was refused: member 'a/fifo' is a device or special file"


class _EndlessMember:
    """A member stream that never ends (what a decompression bomb looks like to the reader): it hands
    out what is asked for, and an unbounded read() would never return (here: MemoryError at once)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size=-1):
        if size is None or size < 0:
            raise MemoryError("an unbounded read of an endless member")
        return b"\0" * size


def test_bounded_read_stops_past_the_declared_size_of_an_endless_member():
    with pytest.raises(UserError, match="member 'bomb' is larger than it declares"):
        _bounded_read(_EndlessMember, 1000, Path("data.tar"), "bomb")
    assert _bounded_read(lambda: io.BytesIO(b"abc"), 3, Path("data.tar"), "ok") == b"abc"


def test_environment_limit_hint_names_the_default_in_gib(monkeypatch):
    monkeypatch.setenv(archive_module.MAX_ARCHIVE_BYTES_ENV, "lots")
    with pytest.raises(UserError) as refused:
        max_archive_bytes()
    assert f"unset it for the default ({archive_module.MAX_ARCHIVE_BYTES / 2**30:g} GiB)" in refused.value.hint


def test_folder_refusals_state_the_limit_and_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_MEMBER_BYTES", 1 << 20)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(UserError, match=r"big.bin is larger than 1 MiB$"):
        [read() for _, read in _folder_members(tmp_path / "data")]

    def unlistable(self, pattern):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "rglob", unlistable)
    with pytest.raises(UserError) as refused:
        list(_folder_members(tmp_path / "data"))
    assert str(refused.value) == f"cannot list data dir {tmp_path / 'data'}: Permission denied"


def test_cache_dir_without_the_environment_variable_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(cache_module.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_module.default_cache_dir() == tmp_path / ".cache" / "resnet-deploy"


# A CIFAR batch as Python 2 wrote it (the official files): protocol 2, keys and byte strings as py2
# ``str`` (SHORT_BINSTRING), which only encoding="bytes" reads back as bytes.
# {'batch_label': 'testing batch 1 of 1', 'labels': [3, 8]}
_PYTHON2_BATCH = (
    b"\x80\x02}q\x00(U\x0bbatch_labelq\x01U\x14testing batch 1 of 1q\x02"
    b"U\x06labelsq\x03]q\x04(K\x03K\x08eu."
)


def test_python2_cifar_pickle_reads_with_str_keys_and_bytes_values():
    batch = _unpickle(_PYTHON2_BATCH, "test_batch")
    assert batch == {"batch_label": b"testing batch 1 of 1", "labels": [3, 8]}


def test_a_pickle_that_is_not_a_dict_names_what_it_is():
    with pytest.raises(UserError, match="test_batch is not a valid CIFAR batch: expected a dict, got list$"):
        _unpickle(pickle.dumps([1, 2], protocol=2), "test_batch")
