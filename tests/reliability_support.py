"""Helpers shared by the reliability tests: crafted hostile files, figure recording, CLI runs.

The figures (faults injected, inputs tried, files torn) that docs/reliability.md quotes are recorded
by the tests themselves into ``reliability-figures.json`` in pytest's base temporary directory, and
also into ``$RESNET_DEPLOY_FIGURES_DIR`` when that is set. Every figure is counted from what the test
observed (``observed``): a test that fails still records what it saw, marked ``"test failed": true``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def record_figures(base: Path, name: str, data: dict) -> None:
    """Merge ``{name: data}`` into reliability-figures.json (one file for the whole session)."""
    targets = [Path(base) / "reliability-figures.json"]
    if os.environ.get("RESNET_DEPLOY_FIGURES_DIR"):
        targets.append(Path(os.environ["RESNET_DEPLOY_FIGURES_DIR"]) / "reliability-figures.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        existing = json.loads(target.read_text()) if target.is_file() else {}
        existing[name] = data
        target.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
    print(f"\n[reliability figures] {name}: {json.dumps(data, sort_keys=True)}")


@pytest.fixture
def figures(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, data: record_figures(base, name, data)


@contextlib.contextmanager
def observed(figures, name: str, *counted: str, extra: Callable[[], dict] | None = None) -> Iterator[Counter]:
    """A Counter of what a test observes, recorded as figure ``name`` when the block ends, also when it
    fails: so every figure is a count of what happened in that run, never a constant. ``counted``
    are the keys shown even when nothing of the kind was seen (their 0 is then a count, not a claim);
    ``extra()`` adds computed values (read at the end)."""
    counts: Counter = Counter({key: 0 for key in counted})
    failed = True
    try:
        yield counts
        failed = False
    finally:
        data = {**counts, **(extra() if extra else {})}
        if failed:
            data["test failed"] = True
        figures(name, data)


def traceback_in(text: str) -> bool:
    return "Traceback" in text


# ------------------------------------------------------------------------------------ hostile pickles


class CodeRunningPickle:
    """An object whose unpickling calls ``function(argument)``: the classic pickle code execution."""

    def __init__(self, function, argument) -> None:
        self.function = function
        self.argument = argument

    def __reduce__(self):
        return (self.function, (self.argument,))


def code_payloads(marker: Path) -> dict[str, CodeRunningPickle]:
    """Ways a pickle can run code; each would create ``marker`` if it ran."""
    import builtins

    shell = f"touch {marker}"
    python = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": CodeRunningPickle(os.system, shell),
        "builtins.exec": CodeRunningPickle(builtins.exec, python),
        "builtins.eval": CodeRunningPickle(builtins.eval, python),
        "subprocess.call": CodeRunningPickle(subprocess.call, ["touch", str(marker)]),
    }


# ------------------------------------------------------------------------------------ images, archives


def png_bytes(colour=(10, 20, 30), size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def random_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def valid_members(prefix: str = "data", classes=("cats", "dogs"), per_class: int = 2) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/{split}/{label}/{i}.png", random_png(hash((split, label, i)) % 1000))
        for split in ("train", "test")
        for label in classes
        for i in range(per_class)
    ]


def write_tar(path: Path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = (), mode: str = "w:gz") -> Path:
    """A tar archive of regular files plus ``extra`` members (links, devices, FIFOs) as given."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return path


def tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info


def tar_with_declared_size(path: Path, members: list[tuple[str, bytes]], name: str, declared: int) -> Path:
    """A plain tar whose last header declares ``declared`` bytes that are not there: what a
    decompression bomb looks like to a reader that trusts sizes."""
    write_tar(path, members, mode="w")
    data = path.read_bytes()
    end = len(data)
    while end >= 512 and data[end - 512 : end] == b"\0" * 512:  # strip the end-of-archive blocks
        end -= 512
    info = tarfile.TarInfo(name)
    info.size = declared
    path.write_bytes(data[:end] + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)
    return path


def write_zip(path: Path, members: list[tuple[str, bytes]], special: list[tuple[str, int, bytes]] = ()) -> Path:
    """A zip of regular files plus ``special`` (name, unix mode, data) entries such as symlinks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, mode, data in special:
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


# ------------------------------------------------------------------------------------ running the CLI


def cli_subprocess(args: list[str], cwd: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start ``resnet-deploy ARGS`` as a separate process (one thread, quiet), for signals and kills."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RESNET_DEPLOY_QUIET": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_deploy.cli", "-q", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    process = cli_subprocess(args, cwd, env)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def pickle_bytes(obj, protocol: int) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 240.0, poll: float = 0.01) -> bool:
    """True once ``predicate()`` holds; False if the process ended first; kills it and fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(poll)
    process.kill()
    raise AssertionError("timed out waiting for the process")


def kill_or_collect(process: subprocess.Popen, counts, moment: str) -> None:
    """SIGKILL ``process`` if it still runs (counted under ``moment``); else require that it succeeded."""
    if process.poll() is None:
        process.kill()
        counts[f"kills: {moment}"] += 1
        process.communicate()
    else:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr
        counts["runs that finished before the kill"] += 1
