"""Output folders holding another run's artifacts are not overwritten (issue #16): `train -o` into a
run of another setting, `quantize`/`export` into an artifact of another checkpoint, `bench --name` into
results of another checkpoint or test set exit 2 with one line naming the folder, what it holds and
--force, and leave the old files byte-identical; --force overwrites; re-runs on the same inputs (and
`train --resume`) go ahead without it.

The train test trains a ResNet8 on 64 synthetic images (a few seconds); the quantize and export tests
stop where the stage would start (the stage replaced by a stub that records the call), since the guard
runs before it; the bench test benches FP32 PyTorch accuracy of a ResNet8 on 32 synthetic images, for
real, so the record the guard reads is the results.json bench writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_deploy.cli import main
from resnet_deploy.fileio import sha256_file


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RESNET_DEPLOY_DATA", raising=False)
    monkeypatch.setenv("RESNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)])


def refused(result, folder: str, holds: str, *details: str) -> None:
    """Exit 2 with one line: the folder, what it holds, what differs, and --force."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {folder} holds {holds} made from other inputs ("), lines[0]
    assert "add --force to overwrite it" in lines[0] and all(detail in lines[0] for detail in details), lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two untrained ResNet8 checkpoints for the synthetic classes (different seeds, so different
    sha256), runs/tiny/best.pt and runs/tiny/last.pt: both default to the export name "tiny"."""
    import torch

    from resnet_deploy.checkpoint import save_checkpoint
    from resnet_deploy.data import synthetic_dataset
    from resnet_deploy.models import create_model, normalize_spec

    dataset = synthetic_dataset()
    folder = tmp_path_factory.mktemp("runs") / "tiny"
    paths = []
    for seed, name in ((0, "best.pt"), (1, "last.pt")):
        torch.manual_seed(seed)
        path = folder / name
        save_checkpoint(path, {"model": normalize_spec("resnet8", 10).to_dict(), "state_dict": create_model("resnet8", 10).state_dict(),
                               "normalization": dataset.normalization.to_dict(), "dataset": {"name": dataset.name, "classes": dataset.classes}})
        paths.append(path)
    return paths[0], paths[1]


def _artifact(folder: Path, checkpoint: Path, payload: str) -> Path:
    """A finished artifact as quantize and export record one: manifest.json with the checkpoint's
    path and sha256, and a file beside it."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)}}))
    (folder / payload).write_bytes(b"artifact of " + checkpoint.name.encode())
    return folder


# ------------------------------------------------------------------------------------------- train


def train(*extra, epochs: int = 1, train_subset: int = 64):
    return invoke("train", "--dataset", "synthetic", "--train-subset", train_subset, "--test-subset", "32", "--model", "resnet8",
                  "--epochs", epochs, "--batch-size", "32", "--device", "cpu", "-o", "out/run", *extra)


def test_train_into_a_run_of_other_settings_is_refused_unless_forced_or_resumed(in_tmp):
    run = in_tmp / "out" / "run"
    first = train()
    assert first.exit_code == 0, first.output
    before = snapshot(run)
    assert {"last.pt", "best.pt", "config.json"} <= set(before)

    refused(train("--lr", "0.05"), "out/run", "a training run", "lr 0.1, not 0.05", "--resume to continue it")
    refused(train("--model", "resnet14"), "out/run", "a training run", "model 'resnet8', not 'resnet14'")
    refused(train(train_subset=48), "out/run", "a training run", "dataset train_size 64, not 48")
    refused(train(epochs=2), "out/run", "a training run", "epochs 1, not 2")
    assert snapshot(run) == before

    # The same command again (its speed settings left auto, config.json holding what they became).
    again = train()
    assert again.exit_code == 0, again.output
    # --resume continues its own folder, with the longer schedule a fresh run was refused above.
    resumed = train("--resume", epochs=2)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    # --force starts over with the other settings.
    forced = train("--lr", "0.05", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.05


# ---------------------------------------------------------------------------------------- quantize


@pytest.fixture
def quantize_calls(monkeypatch) -> list[Path]:
    """quantize_ptq replaced by a stub recording the artifact directory it was given."""
    from resnet_deploy import quantize as quantize_stage

    calls: list[Path] = []
    monkeypatch.setattr(quantize_stage, "quantize_ptq", lambda loaded, dataset, output_dir, **_: calls.append(Path(output_dir)) or {})
    return calls


QUANTIZE_DATA = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--calib-size", "16"]


def test_quantize_into_an_artifact_of_another_checkpoint_is_refused(in_tmp, tiny_checkpoints, quantize_calls):
    best, last = tiny_checkpoints
    folder = _artifact(in_tmp / "calibration" / "q", best, "program.pt2")
    before = snapshot(folder)

    refused(invoke("quantize", last, *QUANTIZE_DATA, "-o", "calibration/q"), "calibration/q", "a quantize artifact",
            f"checkpoint {best} (sha256 {sha256_file(best)[:12]}), not {last} ({sha256_file(last)[:12]})")
    assert snapshot(folder) == before and quantize_calls == []

    # The same checkpoint (other settings are fine: it is its artifact), then another one with --force.
    assert invoke("quantize", best, *QUANTIZE_DATA, "--method", "entropy", "-o", "calibration/q").exit_code == 0
    assert invoke("quantize", last, *QUANTIZE_DATA, "-o", "calibration/q", "--force").exit_code == 0
    assert quantize_calls == [Path("calibration/q")] * 2


def test_unreadable_record_is_refused_and_a_folder_without_one_is_not(in_tmp, tiny_checkpoints, quantize_calls):
    best, _ = tiny_checkpoints
    folder = _artifact(in_tmp / "calibration" / "q", best, "program.pt2")
    (folder / "manifest.json").write_bytes(b"\xff{not json")
    refused(invoke("quantize", best, *QUANTIZE_DATA, "-o", "calibration/q"), "calibration/q", "a quantize artifact",
            "its manifest.json cannot be read")
    (folder / "manifest.json").unlink()  # as a run killed before it wrote its record leaves the folder
    assert invoke("quantize", best, *QUANTIZE_DATA, "-o", "calibration/q").exit_code == 0
    assert quantize_calls == [Path("calibration/q")]


# ------------------------------------------------------------------------------------------ export


@pytest.fixture
def export_calls(monkeypatch) -> list:
    """export_checkpoint replaced by a stub recording the checkpoint it was given."""
    from types import SimpleNamespace

    from resnet_deploy import export as export_stage

    calls: list = []

    def stub(options):
        calls.append(Path(options.checkpoint))
        return SimpleNamespace(manifest={"artifacts": [], "skipped": []}, manifest_path=Path("exports/tiny/manifest.json"))

    monkeypatch.setattr(export_stage, "export_checkpoint", stub)
    return calls


def test_export_of_a_second_checkpoint_from_the_same_folder_is_refused(in_tmp, tiny_checkpoints, export_calls):
    best, last = tiny_checkpoints
    folder = _artifact(in_tmp / "exports" / "tiny", best, "model-fp32.onnx")
    before = snapshot(folder)

    # runs/tiny/last.pt after runs/tiny/best.pt: both are named "tiny" by default.
    refused(invoke("export", last, "--no-tensorrt"), "exports/tiny", "an export", f"not {last} ({sha256_file(last)[:12]})", "give another --name")
    assert snapshot(folder) == before and export_calls == []

    assert invoke("export", best, "--no-tensorrt", "--fp16").exit_code == 0  # the same checkpoint again
    assert invoke("export", last, "--no-tensorrt", "--name", "tiny-last").exit_code == 0  # another folder
    assert invoke("export", last, "--no-tensorrt", "--force").exit_code == 0
    assert export_calls == [best, last, last]
    assert "--force" in invoke("export", "--help").output


# ------------------------------------------------------------------------------------------- bench


def bench(checkpoint, *extra, test_subset: int = 32):
    """An accuracy-only FP32 PyTorch bench of a tiny checkpoint into benchmarks/results/tiny (seconds)."""
    return invoke("bench", "--checkpoint", checkpoint, "--dataset", "synthetic", "--train-subset", "64", "--test-subset", test_subset,
                  "--backend", "pytorch", "--precision", "fp32", "--no-latency", "--name", "tiny", *extra)


def benched_sha256(folder: Path) -> str:
    return json.loads((folder / "results.json").read_text())["model"]["checkpoint"]["sha256"]


def test_bench_into_results_of_another_checkpoint_or_test_set_is_refused(in_tmp, tiny_checkpoints):
    best, last = tiny_checkpoints
    results = in_tmp / "benchmarks" / "results" / "tiny"
    first = bench(best)
    assert first.exit_code == 0, first.output
    before = snapshot(results)
    assert {"results.json", "report.md"} <= set(before)

    refused(bench(last), "benchmarks/results/tiny", "benchmark results",
            f"checkpoint {best} (sha256 {sha256_file(best)[:12]}), not {last} ({sha256_file(last)[:12]})", "give another --name")
    refused(bench(best, test_subset=16), "benchmarks/results/tiny", "benchmark results", "test set size 32, not 16")
    assert snapshot(results) == before

    # The same checkpoint on the same test set again (another choice of rows is the same model re-measured).
    again = bench(best, "--accuracy-batch-size", "8")
    assert again.exit_code == 0, again.output
    assert json.loads((results / "results.json").read_text())["settings"]["accuracy_batch_size"] == 8
    # --force replaces them with the other checkpoint's.
    forced = bench(last, "--force")
    assert forced.exit_code == 0, forced.output
    assert benched_sha256(results) == sha256_file(last)
    assert "--force" in invoke("bench", "--help").output
