"""Faults during long jobs: kill -9 at random moments, SIGINT/SIGTERM, full and read-only disks, NaN.

The kill and signal tests run the real ``resnet-deploy train`` in separate processes (one thread each,
so every process computes bit-identical results) and compare the weights a resumed run ends with to
those of a run that was never stopped: resumption must be exact, not approximately right.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import time
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from reliability_support import cli_subprocess, figures, kill_or_collect, observed, run_cli, traceback_in, wait_for  # noqa: F401 - figures is a fixture
from resnet_deploy import data as data_module
from resnet_deploy import fileio
from resnet_deploy.checkpoint import load_checkpoint, read_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.errors import UserError
from resnet_deploy.fileio import read_json
from resnet_deploy.train import TrainConfig, train

EPOCHS = 4
TRAIN_ARGS = [
    "train", "--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64", "--batch-size", "32",
    "--model", "resnet8", "--device", "cpu", "--seed", "3", "--epochs", str(EPOCHS),
]  # fmt: skip
OUTPUT_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "metrics.csv")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The same short training run, never interrupted: the weights every stopped run must end with."""
    work = tmp_path_factory.mktemp("reference")
    result = run_cli([*TRAIN_ARGS, "-o", str(work / "run")], cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "run"


def _state_dict(run: Path) -> dict:
    return read_checkpoint(run / "last.pt")["state_dict"]


def _differing_tensors(run: Path, reference: Path) -> list[str]:
    """Names of the weights that differ from the uninterrupted run's (a missing or extra name counts)."""
    ours, theirs = _state_dict(run), _state_dict(reference)
    return sorted(ours.keys() ^ theirs.keys()) + [key for key in ours if key in theirs and not torch.equal(ours[key], theirs[key])]


def _assert_same_weights(run: Path, reference: Path) -> None:
    different = _differing_tensors(run, reference)
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def _check_everything_left_behind(run: Path, counts: Counter) -> None:
    """Every checkpoint and JSON file present must load completely: zero torn files."""
    for name in OUTPUT_FILES:
        path = run / name
        if not path.exists():
            continue
        try:
            if name.endswith(".pt"):
                load_checkpoint(path)
                read_checkpoint(path)["optimizer"]  # the training state too, not only the weights
            elif name.endswith(".jsonl"):
                [json.loads(line) for line in path.read_text().splitlines()]
            elif name.endswith(".json"):
                read_json(path)
            elif name.endswith(".csv"):
                lines = path.read_text().splitlines()
                assert len({line.count(",") for line in lines}) == 1, "ragged CSV"
        except (UserError, ValueError, AssertionError) as exc:
            counts["torn files"] += 1
            raise AssertionError(f"{path} is torn after a kill: {exc}") from exc
        counts["files loaded after kills"] += 1


def _identities(run: Path) -> dict:
    identities = {}
    for name in ("last.pt", "best.pt"):
        with contextlib.suppress(FileNotFoundError):
            stat = (run / name).stat()
            identities[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return identities


@pytest.mark.slow
def test_kill_9_at_random_moments_never_tears_a_file_and_resume_is_exact(tmp_path, reference_run, figures):
    """A loop of runs on one output folder, each killed with SIGKILL at a random moment: during start-up,
    at a random time while training, the instant a checkpoint's temporary file appears (mid-write), or
    the instant a checkpoint file changes (where an in-place writer would be half-way through it).
    After every kill each file left behind must load; ``--resume`` continues; every chain of runs that
    reaches the last epoch must end with exactly the weights of the uninterrupted run."""
    rng = random.Random(int(os.environ.get("RESNET_DEPLOY_KILL_SEED", "20240601")))
    kills = int(os.environ.get("RESNET_DEPLOY_KILLS", "12"))
    with observed(figures, "kill_9_loop", "torn files", "chains resumed to the end with identical weights",
                  extra=lambda: {"kills": sum(v for k, v in counts.items() if k.startswith("kills:"))}) as counts:
        _kill_loop(tmp_path, reference_run, rng, kills, counts)


def _kill_loop(tmp_path: Path, reference_run: Path, rng: random.Random, kills: int, counts: Counter) -> None:
    chain = 0
    run = tmp_path / f"chain{chain}"
    seen_temporaries: set[str] = set()
    for _ in range(kills):
        moment = rng.choices(["start-up", "training", "mid-write", "file-changing"], weights=[1, 2, 2, 2])[0]
        launched = time.time()
        args = [*TRAIN_ARGS, "-o", str(run), *(["--resume"] if (run / "last.pt").exists() else [])]
        process = cli_subprocess(args, cwd=tmp_path)
        if moment == "start-up":
            time.sleep(rng.uniform(0, 2.5))  # importing torch, building the dataset and the model
        else:
            config_json = run / "config.json"  # rewritten by every run once training is about to start
            started = wait_for(lambda: config_json.exists() and config_json.stat().st_mtime > launched, process)
            if moment == "training" and started:
                time.sleep(rng.uniform(0, 3.0))
            elif moment == "mid-write" and started:
                wait_for(lambda: any(run.glob(".*.tmp")), process, poll=0.0005)
                time.sleep(rng.choice([0, 0.0005, 0.001, 0.002, 0.005, 0.01]))
            elif moment == "file-changing" and started:
                # The instant a checkpoint differs from what it was: an in-place writer is caught
                # mid-file here; an atomic one has just renamed a complete file into place.
                before = _identities(run)
                wait_for(lambda: _identities(run) != before, process, poll=0.0005)
        kill_or_collect(process, counts, moment)
        _check_everything_left_behind(run, counts)
        temporaries = {p.name for p in run.glob(".*.tmp")}
        if temporaries - seen_temporaries:
            counts["kills that left a temporary file (mid-write)"] += 1
        seen_temporaries |= temporaries
        if (run / "last.pt").exists() and read_checkpoint(run / "last.pt")["epoch"] == EPOCHS:
            _assert_same_weights(run, reference_run)
            counts["chains completed between kills"] += 1
            counts["chains resumed to the end with identical weights"] += 1
            chain += 1
            run = tmp_path / f"chain{chain}"
    final = run_cli([*TRAIN_ARGS, "-o", str(run), "--resume"], cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    _assert_same_weights(run, reference_run)
    counts["chains resumed to the end with identical weights"] += 1
    assert [row["epoch"] for row in read_checkpoint(run / "last.pt")["history"]] == list(range(1, EPOCHS + 1))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    assert not list(run.glob(".*.tmp")), "a finished run must clean up temporaries of killed runs"
    assert counts["torn files"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_saves_progress_and_resume_is_exact(tmp_path, reference_run, signum, figures):
    """Ctrl-C or SIGTERM while training: exit 128+N, the batch reached is saved, ``--resume`` ends with
    exactly the weights of the uninterrupted run."""
    rng = random.Random(signum)
    run = tmp_path / "run"
    with observed(figures, f"signal_{signal.Signals(signum).name}", "tracebacks") as record:
        process = cli_subprocess([*TRAIN_ARGS, "-o", str(run)], cwd=tmp_path)
        assert wait_for(lambda: (run / "last.pt").exists(), process), process.communicate()
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        record["exit_code"] = process.returncode
        record["tracebacks"] += traceback_in(stderr)
        assert process.returncode == 128 + signum, stderr
        assert "progress saved to" in stderr and "--resume" in stderr and "Traceback" not in stderr
        saved = read_checkpoint(run / "last.pt")
        record["saved_at_epoch"], record["saved_at_batch"] = saved["epoch"] + 1, saved["step"]
        assert saved["step"] > 0, "the signal must save the batch reached, not only the last epoch"
        resumed = run_cli([*TRAIN_ARGS, "-o", str(run), "--resume"], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        record["weights differing from the uninterrupted run"] = len(_differing_tensors(run, reference_run))
        _assert_same_weights(run, reference_run)


# --------------------------------------------------------------------------------------------- storage


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, read_only: bool = False):
    """A tiny real file system (root with mount rights only); yields None where that is not possible."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    options = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _refuse_dataset_loading(monkeypatch):
    def too_early():
        raise AssertionError("the dataset was loaded before --output was checked")

    monkeypatch.setattr(data_module, "synthetic_dataset", too_early)


def _train_cli(output: Path, *extra: str):
    result = CliRunner().invoke(main, ["-q", "train", "--dataset", "synthetic", "--device", "cpu", "--epochs", "1", "-o", str(output), *extra])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_read_only_output_is_refused_up_front(tmp_path, monkeypatch, figures):
    """exit 2 naming --output, before any data is loaded. A read-only tmpfs when we may mount one
    (root ignores permission bits), a chmod 555 folder otherwise."""
    _refuse_dataset_loading(monkeypatch)
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as mounted:
        folder = mounted
        if folder is None:
            if os.geteuid() == 0:
                pytest.skip("running as root without mount rights: no way to make a folder read-only")
            folder = tmp_path / "ro"
            folder.chmod(0o555)
        result = _train_cli(folder / "run")
        folder_kind = "read-only tmpfs" if mounted else "chmod 555 folder"
    assert result.exit_code == 2, result.output
    cause = "Read-only file system" if mounted else "Permission denied"  # the system's reason, as docs/reliability.md quotes it
    assert "--output" in result.output and f"is not writable: {cause}" in result.output, result.output
    figures("read_only_output", {"file system": folder_kind, "exit_code": result.exit_code, "message": result.output.strip().splitlines()[0][:160]})


def test_full_disk_is_refused_up_front(tmp_path, monkeypatch, figures):
    """Too little space for the checkpoints: exit 2 with free and needed MiB, before data loading.
    A real 8 MiB tmpfs where possible, and in every case a patched disk_usage, including the
    size-aware check (ResNet152 needs ~1.4 GB for last.pt + best.pt + a temporary copy)."""
    with _tmpfs(tmp_path / "small", "8m") as mounted:
        if mounted is not None:
            _refuse_dataset_loading(monkeypatch)
            result = _train_cli(mounted / "run")
            assert result.exit_code == 2 and "MiB free, 64 MiB needed" in result.output, result.output
            monkeypatch.undo()
    free = 200 << 20
    usage = types.SimpleNamespace(total=1 << 40, used=(1 << 40) - free, free=free)
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: usage)
    result = _train_cli(tmp_path / "big", "--model", "resnet152", "--train-subset", "64", "--test-subset", "64", "--batch-size", "32")
    assert result.exit_code == 2, result.output
    needed = int(result.output.split("MiB free, ")[1].split(" MiB needed")[0])
    assert "200 MiB free" in result.output and needed > 1000, result.output
    assert not (tmp_path / "big" / "last.pt").exists()
    figures("disk_full_up_front", {"real tmpfs": mounted is not None, "resnet152 needed MiB": needed})


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
    return filler


def test_disk_full_mid_run_keeps_the_last_checkpoint_and_resume_finishes(tmp_path, synthetic, monkeypatch, figures):
    """The disk fills after epoch 1: saving epoch 2 fails with a clear UserError, the epoch-1 last.pt is
    intact, no temporary file is left; after space is freed --resume finishes with the weights of an
    uninterrupted run. A real tmpfs filled by a file where possible, a failing fsync otherwise."""
    dataset = synthetic.subset(256, 64)
    config = lambda: TrainConfig(model="resnet8", epochs=3, batch_size=32, device="cpu")  # noqa: E731
    train(config(), dataset, tmp_path / "straight")
    with _tmpfs(tmp_path / "disk", "80m") as mounted:
        run = (mounted or tmp_path) / "run"
        filler = []

        def fill_after_epoch_1(epoch, step):
            if (epoch, step) == (1, 0) and not filler:
                if mounted is not None:
                    filler.append(_fill(mounted))
                else:
                    filler.append(True)

                    def no_space(fd):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                    monkeypatch.setattr(fileio.os, "fsync", no_space)

        with pytest.raises(UserError, match="could not write .*No space left on device.*previous version is intact") as info:
            train(config(), dataset, run, on_step=fill_after_epoch_1)
        assert read_checkpoint(run / "last.pt")["epoch"] == 1
        assert not list(run.glob(".*.tmp"))
        monkeypatch.undo()
        if mounted is not None:
            filler[0].unlink()
        train(config(), dataset, run, resume=True)
        different = _differing_tensors(run, tmp_path / "straight")
        figures("disk_full_mid_run", {"real tmpfs": mounted is not None, "message": str(info.value).splitlines()[0][-120:],
                                      "weights differing from an uninterrupted run": len(different)})  # fmt: skip
        _assert_same_weights(run, tmp_path / "straight")


def test_nan_loss_is_reported_with_stage_and_batch(tmp_path, figures):
    """--lr 1e30 makes the loss overflow: exit 2 naming the epoch and batch, and what to change."""
    result = _train_cli(tmp_path / "nan", "--lr", "1e30", "--train-subset", "256", "--batch-size", "32", "--model", "resnet8")
    assert result.exit_code == 2, result.output
    assert "training diverged: loss is" in result.output and "at epoch 1, batch" in result.output
    assert "lower --lr" in result.output
    figures("nan_loss", {"message": result.output.strip().splitlines()[0]})


@pytest.mark.slow
def test_sigterm_in_a_stage_without_its_own_stop_exits_cleanly(tmp_path, synthetic_checkpoint, figures):
    """PTQ has no graceful stop of its own (calibration takes seconds): SIGTERM still ends it with exit
    143 and a message, no traceback, and no artifact that claims to be complete."""
    output = tmp_path / "int8"
    process = cli_subprocess(
        ["quantize", str(synthetic_checkpoint), "--dataset", "synthetic", "--target", "cpu", "--calib-size", "512", "-o", str(output)],
        cwd=tmp_path,
    )
    assert wait_for(output.exists, process), process.communicate()
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    figures("sigterm_during_ptq", {"exit_code": process.returncode, "tracebacks": int(traceback_in(stderr)),
                                   "manifest written": (output / "manifest.json").exists(),
                                   "temporary files left": len(list(output.glob(".*.tmp")))})  # fmt: skip
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert not (output / "manifest.json").exists()
    assert not list(output.glob(".*.tmp"))
