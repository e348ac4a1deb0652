"""Faults in the stages after training: SIGTERM and kill -9 during `quantize --qat`, kill -9 during `export`.

The training kill loop (test_reliability_faults.py) proves the trainer's files survive SIGKILL. QAT
and export write through the same fileio helpers, but write other files in another order (QAT:
``qat_state.pt`` after each epoch, then ``program.pt2``, ``qparams.json`` and ``manifest.json`` last;
export: ONNX files, then ``manifest.json``). These tests kill the real commands at random moments,
including the instant a temporary file appears or an output changes, and require that every file
left behind loads completely with the project's own loaders, that ``--resume`` continues, and that
the resumed QAT chain ends with exactly the weights of a QAT run that was never stopped.

Knobs (shared with the training kill loop): ``RESNET_DEPLOY_KILLS`` (default 12; QAT gets a third of
it and export a sixth, at least 2 each, because every QAT process spends ~10 s importing and tracing
before it trains and ~15 s converting after, and every export ~6 s) and ``RESNET_DEPLOY_KILL_SEED``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch

from reliability_support import cli_subprocess, figures, kill_or_collect, observed, run_cli, wait_for  # noqa: F401 - figures is a fixture
from resnet_deploy.checkpoint import load_checkpoint
from resnet_deploy.errors import UserError
from resnet_deploy.export import load_manifest
from resnet_deploy.fileio import read_json
from resnet_deploy.quantize import load_quantized
from resnet_deploy.quantize.artifact import refuse_pickled_program_entries, register_quant_ops
from resnet_deploy.quantize.qat import STATE_FILE, _read_state

QAT_EPOCHS = 3
QAT_FILES = (STATE_FILE, "program.pt2", "qparams.json", "manifest.json")
ARTIFACT_FILES = ("program.pt2", "qparams.json", "manifest.json")
DATA_ARGS = ["--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64"]


def _kill_budget(share: int, stream: str) -> tuple[random.Random, int]:
    """A seeded generator (one stream per test) and the number of kills: RESNET_DEPLOY_KILLS // share."""
    seed = int(os.environ.get("RESNET_DEPLOY_KILL_SEED", "20240601"))
    kills = max(2, int(os.environ.get("RESNET_DEPLOY_KILLS", "12")) // share)
    return random.Random(f"{seed}-{stream}"), kills


def _plan(rng: random.Random, moments: list[str], kills: int) -> list[str]:
    """``kills`` moments, each of ``moments`` as evenly as the count allows, in a seeded order."""
    order = list(moments)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(kills)]


def _qat_args(checkpoint: Path, output: Path, resume: bool = False) -> list[str]:
    # 16 steps of 16 images per epoch: epochs long enough for a signal to land inside one.
    return ["quantize", str(checkpoint), "--qat", *DATA_ARGS, "--calib-size", "64", "--epochs", str(QAT_EPOCHS),
            "--batch-size", "16", "-o", str(output), *(["--resume"] if resume else [])]  # fmt: skip


def _identities(folder: Path, names) -> dict:
    identities = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            stat = (folder / name).stat()
            identities[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return identities


def _state_epoch(path: Path) -> int | None:
    """The epoch saved in a QAT state file; None when there is none (or, only with a broken writer
    such as tests/mutants/torn_writes, when it is unreadable: the file checks report that)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001
        return None


def _wait_for_state_epoch(path: Path, epoch: int, process: subprocess.Popen) -> bool:
    """Wait until the QAT state saved at ``path`` is at ``epoch``, reading it only when it changes
    (the process under test has the one core to itself)."""
    seen: list = [None]

    def reached() -> bool:
        identity = _identities(path.parent, [path.name]).get(path.name)
        if identity is None or identity == seen[0]:
            return False
        seen[0] = identity
        return _state_epoch(path) == epoch

    return wait_for(reached, process)


def _new_temporaries(folder: Path, seen: set[str]) -> set[str]:
    """Temporary files of atomic writes that were not there before (killed runs may leave some)."""
    return {p.name for p in folder.glob(".*.tmp")} - seen


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, synthetic) -> Path:
    """ResNet8 after one epoch on the same 256 synthetic images the commands below use (the same
    ``--train-subset``): the smallest real model QAT can fine-tune."""
    from resnet_deploy.train import TrainConfig, train

    work = tmp_path_factory.mktemp("tiny")
    train(TrainConfig(model="resnet8", epochs=1, batch_size=32, device="cpu"), synthetic.subset(256, 64), work / "run")
    return work / "run" / "last.pt"


@pytest.fixture(scope="module")
def qat_reference(tiny_checkpoint, tmp_path_factory) -> dict:
    """An uninterrupted QAT run, stopped once its final training state is saved (the int8 conversion
    that follows does not change that state): the weights every interrupted chain must end with, and
    how long the phases take on this machine (to place random kills)."""
    work = tmp_path_factory.mktemp("qat_reference")
    output = work / "qat"
    launched = time.monotonic()
    process = cli_subprocess(_qat_args(tiny_checkpoint, output), cwd=work)
    state = output / STATE_FILE
    assert wait_for(state.exists, process), process.communicate()
    first_state_s = time.monotonic() - launched
    assert _wait_for_state_epoch(state, QAT_EPOCHS, process), process.communicate()
    final_state_s = time.monotonic() - launched
    process.kill()
    process.communicate()
    saved = _read_state(state, load_checkpoint(tiny_checkpoint))
    return {"model": saved["model"], "history": saved["history"], "first_state_s": first_state_s, "final_state_s": final_state_s}


def _differing_qat_tensors(output: Path, checkpoint: Path, reference: dict) -> list[str]:
    """Names of the trained weights that differ from the uninterrupted QAT run's (missing or extra count)."""
    ours, theirs = _read_state(output / STATE_FILE, load_checkpoint(checkpoint))["model"], reference["model"]
    return sorted(ours.keys() ^ theirs.keys()) + [key for key in ours if key in theirs and not torch.equal(ours[key], theirs[key])]


def _assert_same_qat_weights(output: Path, checkpoint: Path, reference: dict) -> None:
    saved = _read_state(output / STATE_FILE, load_checkpoint(checkpoint))
    assert (saved["epoch"], saved["step"]) == (QAT_EPOCHS, 0)
    different = _differing_qat_tensors(output, checkpoint, reference)
    assert not different, f"{len(different)} tensors differ from the uninterrupted QAT run, e.g. {different[:3]}"


def _check_qat_files(output: Path, checkpoint: Path, counts: Counter) -> None:
    """Every file present loads completely with the project's loaders: zero torn files."""
    loaded = load_checkpoint(checkpoint)
    for name in QAT_FILES:
        path = output / name
        if not path.exists():
            continue
        try:
            if name == STATE_FILE:
                state = _read_state(path, loaded)  # format, checkpoint binding, weights-only load
                assert state["model"] and all(isinstance(v, torch.Tensor) for v in state["model"].values())
                assert 0 <= state["epoch"] <= QAT_EPOCHS and state["optimizer"]["state"] is not None
            elif name == "manifest.json":
                # The manifest vouches for the program and qparams by sha256: loading checks both,
                # then deserialises the program and runs it.
                quantized = load_quantized(output, checkpoint=checkpoint)
                logits = quantized(torch.zeros(2, 3, 32, 32))
                assert logits.shape == (2, loaded.spec.num_classes) and torch.isfinite(logits).all()
            elif name == "program.pt2":
                refuse_pickled_program_entries(path)
                register_quant_ops()
                torch.export.load(str(path))
            elif name == "qparams.json":
                assert read_json(path)["tensors"]
        except (UserError, RuntimeError, ValueError, KeyError, AssertionError, EOFError) as exc:
            counts["torn files"] += 1
            raise AssertionError(f"{path} is torn after a kill: {type(exc).__name__}: {exc}") from exc
        counts["files loaded after kills"] += 1


def _sigterm_mid_epoch(checkpoint: Path, output: Path, cwd: Path, delay_s: float) -> dict:
    """A fresh QAT run sent SIGTERM ``delay_s`` after it saved epoch 1 (inside epoch 2): it must exit
    143 naming the saved state and --resume, having saved the batch it reached (not only the last
    finished epoch)."""
    process = cli_subprocess(_qat_args(checkpoint, output), cwd=cwd)
    assert wait_for((output / STATE_FILE).exists, process), process.communicate()  # epoch 1 saved
    time.sleep(delay_s)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and f"progress saved to {output / STATE_FILE}" in stderr and "--resume" in stderr, stderr
    saved = _read_state(output / STATE_FILE, load_checkpoint(checkpoint))
    assert saved["step"] > 0, "SIGTERM must save the batch reached, not only the last finished epoch"
    assert not (output / "manifest.json").exists()
    return {"exit_code": process.returncode, "signal_after_epoch_1_s": round(delay_s, 2), "saved_at_epoch": saved["epoch"] + 1, "saved_at_batch": saved["step"]}


@pytest.mark.slow
def test_sigterm_and_kill_9_during_qat_never_tear_a_file_and_resume_is_exact(tmp_path, tiny_checkpoint, qat_reference, figures):
    """One `quantize --qat` output folder, interrupted again and again. First SIGTERM in the second
    epoch (exit 143, the batch reached saved). Then SIGKILL: at a random moment (start-up,
    calibration, fine-tuning), the instant a temporary file appears, the instant an output changes,
    and while the int8 artifact is written. After every interruption each file left loads with the
    project's loaders; every next run uses --resume; the chain ends with exactly the uninterrupted
    run's trained weights and history, and an artifact that loads and runs."""
    rng, kills = _kill_budget(3, "qat")
    # The early moments first, then one kill while the int8 artifact is written: once a run has saved
    # its last epoch, every later run goes straight to the (slow) conversion, so the chain would stop
    # visiting the training phase.
    plan = _plan(rng, ["random", "mid-write", "file-changing"], kills - 1) + ["artifact-write"]
    output = tmp_path / "qat"
    with observed(figures, "kill_9_loop_qat", "torn files",
                  extra=lambda: {"kills": sum(v for k, v in counts.items() if k.startswith("kills:")),
                                 "temporary files left in the folder after the chain": len(list(output.glob(".*.tmp")))}) as counts:  # fmt: skip
        _qat_kill_chain(tmp_path, tiny_checkpoint, qat_reference, figures, rng, plan, output, counts)


def _qat_kill_chain(tmp_path, tiny_checkpoint, qat_reference, figures, rng, plan, output, counts) -> None:
    epoch_s = (qat_reference["final_state_s"] - qat_reference["first_state_s"]) / (QAT_EPOCHS - 1)
    sigterm = _sigterm_mid_epoch(tiny_checkpoint, output, tmp_path, rng.uniform(0.4, 0.9) * epoch_s)
    _check_qat_files(output, tiny_checkpoint, counts)
    seen_temporaries: set[str] = {p.name for p in output.glob(".*.tmp")}
    for moment in plan:
        process = cli_subprocess(_qat_args(tiny_checkpoint, output, resume=True), cwd=tmp_path)
        if moment == "random":  # anywhere from start-up to the last epoch
            time.sleep(rng.uniform(0, qat_reference["final_state_s"]))
        elif moment == "mid-write":
            wait_for(lambda: _new_temporaries(output, seen_temporaries), process, poll=0.0005)
            time.sleep(rng.choice([0, 0.0005, 0.001, 0.002, 0.005]))
        elif moment == "file-changing":
            before = _identities(output, QAT_FILES)
            wait_for(lambda: _identities(output, QAT_FILES) != before, process, poll=0.0005)
        else:  # artifact-write: the first change of program.pt2 / qparams.json / manifest.json, or its temporary
            before = _identities(output, ARTIFACT_FILES)
            wait_for(
                lambda: _identities(output, ARTIFACT_FILES) != before
                or any(name.startswith((".program.pt2.", ".qparams.json.", ".manifest.json.")) for name in _new_temporaries(output, seen_temporaries)),
                process, poll=0.0005,
            )  # fmt: skip
        kill_or_collect(process, counts, moment)
        _check_qat_files(output, tiny_checkpoint, counts)
        temporaries = {p.name for p in output.glob(".*.tmp")}
        if temporaries - seen_temporaries:
            counts["kills that left a temporary file (mid-write)"] += 1
        seen_temporaries |= temporaries
        counts[f"saved state after the kill: {_state_epoch(output / STATE_FILE)} epochs done"] += 1
    final = run_cli(_qat_args(tiny_checkpoint, output, resume=True), cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    assert not list(output.glob(".*.tmp"))  # a new run removes what killed ones left
    _assert_same_qat_weights(output, tiny_checkpoint, qat_reference)
    quantized = load_quantized(output, checkpoint=tiny_checkpoint)
    untimed = lambda history: [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in history]  # noqa: E731
    assert [row["epoch"] for row in quantized.manifest["qat"]["history"]] == list(range(1, QAT_EPOCHS + 1))
    assert untimed(quantized.manifest["qat"]["history"]) == untimed(qat_reference["history"])
    _check_qat_files(output, tiny_checkpoint, counts)
    assert counts["torn files"] == 0
    different = len(_differing_qat_tensors(output, tiny_checkpoint, qat_reference))  # 0: asserted above
    counts["weights differing from the uninterrupted run after the chain"] = different
    figures("signal_SIGTERM_qat", {**sigterm, "weights differing from the uninterrupted run after resuming": different})


# ------------------------------------------------------------------------------------------- export


def _export_args(checkpoint: Path, output_dir: Path) -> list[str]:
    return ["export", str(checkpoint), "--no-tensorrt", "--output-dir", str(output_dir), "--name", "run"]


def _check_export_files(folder: Path, counts: Counter) -> None:
    """Each ONNX file present is complete (parses and passes the checker); a manifest present vouches
    for files that are there with its sha256."""
    for path in sorted(folder.glob("*.onnx")):
        try:
            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        except Exception as exc:  # noqa: BLE001 - any failure to parse is a torn file
            counts["torn files"] += 1
            raise AssertionError(f"{path} is torn after a kill: {type(exc).__name__}: {exc}") from exc
        counts["files loaded after kills"] += 1
    if (folder / "manifest.json").exists():
        try:
            manifest = load_manifest(folder, verify_hashes=True)
        except UserError as exc:
            counts["torn files"] += 1
            raise AssertionError(f"{folder}/manifest.json does not match the files after a kill: {exc}") from exc
        assert {a["precision"] for a in manifest["artifacts"]} == {"fp32"}
        counts["files loaded after kills"] += 1


@pytest.mark.slow
def test_kill_9_during_export_never_tears_a_file(tmp_path, tiny_checkpoint, figures):
    """`export` (FP32 ONNX, then the manifest) killed with SIGKILL on one folder: at a random moment, as a
    temporary file appears, or as an output changes. Every ONNX left passes the checker and a manifest,
    when present, matches the files by sha256; a final run completes."""
    rng, kills = _kill_budget(6, "export")
    folder = tmp_path / "exports" / "run"
    with observed(figures, "kill_9_loop_export", "torn files",
                  extra=lambda: {"kills": sum(v for k, v in counts.items() if k.startswith("kills:")),
                                 "temporary files left in the folder": len(list(folder.glob(".*.tmp")))}) as counts:  # fmt: skip
        _export_kill_loop(tmp_path, tiny_checkpoint, rng, kills, folder, counts)


def _export_kill_loop(tmp_path, tiny_checkpoint, rng, kills, folder, counts) -> None:
    watched = ("model-fp32.onnx", "manifest.json")
    seen_temporaries: set[str] = set()
    for moment in _plan(rng, ["random", "mid-write", "file-changing"], kills):
        process = cli_subprocess(_export_args(tiny_checkpoint, tmp_path / "exports"), cwd=tmp_path)
        if moment == "random":  # an export of this model takes ~6 s here: start-up, tracing, checks, writes
            time.sleep(rng.uniform(0, 6.0))
        elif moment == "mid-write":
            wait_for(lambda: _new_temporaries(folder, seen_temporaries), process, poll=0.0005)
            time.sleep(rng.choice([0, 0.0005, 0.001, 0.002]))
        else:
            before = _identities(folder, watched)
            wait_for(lambda: _identities(folder, watched) != before, process, poll=0.0005)
        kill_or_collect(process, counts, moment)
        _check_export_files(folder, counts)
        if _new_temporaries(folder, seen_temporaries):
            counts["kills that left a temporary file (mid-write)"] += 1
        seen_temporaries |= {p.name for p in folder.glob(".*.tmp")}
    final = run_cli(_export_args(tiny_checkpoint, tmp_path / "exports"), cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    _check_export_files(folder, counts)
    assert not list(folder.glob(".*.tmp"))  # a new run removes what killed ones left
    assert counts["torn files"] == 0


def test_empty_torch_file_is_refused_with_a_message(tmp_path):
    """What a writer killed right after opening its target leaves: an empty file. torch raises an
    EOFError without a message for it, which used to end in an IndexError traceback."""
    from click.testing import CliRunner

    from resnet_deploy.cli import main

    empty = tmp_path / "last.pt"
    empty.write_bytes(b"")
    result = CliRunner().invoke(main, ["-q", "eval", str(empty), "--dataset", "synthetic"])
    assert result.exit_code == 2, result.output
    assert "is corrupt or not a torch file: EOFError" in result.output and "Traceback" not in result.output
