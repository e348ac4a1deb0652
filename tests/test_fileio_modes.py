"""Atomically written files get the permissions a plain ``open(path, "w")`` gives (0666 & ~umask),
with the umask read when the file is written, not once at import; tempfile alone would give 0600."""

from __future__ import annotations

import contextlib
import os
import stat
import threading

import pytest

from resnet_deploy import fileio


@contextlib.contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_files_get_the_mode_open_gives(tmp_path, mask):
    with umask(mask):
        fileio.atomic_write_text(tmp_path / "atomic.txt", "x")
        fileio.write_json(tmp_path / "atomic.json", {"a": 1})
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    assert mode(tmp_path / "plain.txt") == 0o666 & ~mask
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "atomic.json") == 0o666 & ~mask


def test_umask_is_read_without_changing_it(monkeypatch):
    """Where /proc/self/status reports the umask it is read from there: the umask is never set
    meanwhile (another thread creating a file then would get the wrong mode)."""
    with open("/proc/self/status") if os.path.isfile("/proc/self/status") else contextlib.nullcontext(None) as status:
        if status is None or "Umask:" not in status.read():
            pytest.skip("no Umask line in /proc/self/status here (the os.umask fallback is tested below)")
    with umask(0o037):
        calls = []
        real_umask = os.umask
        monkeypatch.setattr(os, "umask", lambda value: calls.append(value) or real_umask(value))
        read = fileio.current_umask()
        monkeypatch.undo()
    assert read == 0o037 and calls == []


def test_umask_is_read_even_when_the_status_file_is_not_ascii(tmp_path, monkeypatch):
    """The process name in /proc/self/status is whatever bytes it was given (a non-ASCII script
    name, prctl): the Umask line is still read, without setting the umask."""
    status = tmp_path / "status"
    status.write_bytes("Name:\tpythön-trainer\nUmask:\t0027\n".encode("utf-8"))
    monkeypatch.setattr(fileio, "_PROC_STATUS", str(status))
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda value: calls.append(value) or real_umask(value))
    assert fileio.current_umask() == 0o027 and calls == []


def test_fallback_sets_and_restores_the_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_PROC_STATUS", str(tmp_path / "absent"))
    with umask(0o027):
        assert fileio.current_umask() == 0o027
        assert os.umask(0o027) == 0o027, "the fallback left the umask as it found it"
        fileio.atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert mode(tmp_path / "f.bin") == 0o640


def test_umask_changed_after_import_is_used(tmp_path):
    """The old code read the umask once at import; a later os.umask (a service dropping to 027) was
    ignored. A thread is used to show the read is per call, from any thread."""
    result = {}

    def write():
        fileio.atomic_write_text(tmp_path / "late.txt", "x")
        result["mode"] = mode(tmp_path / "late.txt")

    with umask(0o077):
        worker = threading.Thread(target=write)
        worker.start()
        worker.join()
    assert result["mode"] == 0o600
