"""benchmarks/plain_vs_residual.py: the verdict is computed from the runs, missing and unfinished runs
are reported as such, and the three outputs are written (fake runs, no training)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "plain_vs_residual.py"
_spec = importlib.util.spec_from_file_location("plain_vs_residual", SCRIPT)
study = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = study  # dataclasses look their module up there
_spec.loader.exec_module(study)

RECIPE = {"lr": 0.2, "schedule": "onecycle", "epochs": 3}


def write_run(root: Path, name: str, final_train_error: float, final_test_error: float, epochs_done: int = 3, planned: int = 3) -> Path:
    """A run directory as train() writes it: errors fall linearly to the given final figures."""
    run = root / name
    run.mkdir(parents=True)
    model = {"name": name.replace("plain", "resnet"), "num_classes": 10, "plain": name.startswith("plain"), "shortcut": "A"}
    config = {"train": {**RECIPE, "epochs": planned, "model": model["name"], "plain": model["plain"]}, "model": model,
              "dataset": {"name": "cifar10", "test_size": 10000}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    rows = [
        {"epoch": e, "train_top1": 100 - final_train_error - 5 * (epochs_done - e), "test_top1": 100 - final_test_error - 5 * (epochs_done - e)}
        for e in range(1, epochs_done + 1)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def runs(root: Path, **finals) -> dict:
    figures = {"plain20": (10, 12), "plain56": (14, 15), "resnet20": (8, 9), "resnet56": (5, 7), **finals}
    loaded = [study.load_run(write_run(root, name, *pair)) for name, pair in figures.items()]
    return {run.name: run for run in loaded}


def test_degradation_and_residual_gain_are_read_from_the_data(tmp_path):
    result = study.verdict(runs(tmp_path))
    assert result["degradation"] is True and result["deeper_resnet_better"] is True and result["reproduces_paper"] is True
    assert result["plain"]["test_error"] == {"plain20": 12, "plain56": 15}
    assert result["plain"]["test_difference_within_noise"] is False  # 3 points on 10,000 images
    assert result["same_recipe"] is True


@pytest.mark.parametrize(
    ("finals", "question"),
    [({"plain56": (9, 15)}, "degradation"), ({"plain56": (14, 11)}, "degradation"), ({"resnet56": (5, 9.5)}, "deeper_resnet_better")],
)
def test_a_finding_not_in_the_data_is_answered_no(tmp_path, finals, question):
    result = study.verdict(runs(tmp_path, **finals))
    assert result[question] is False and result["reproduces_paper"] is False


def test_unfinished_and_missing_runs_leave_their_question_open(tmp_path):
    loaded = runs(tmp_path)
    loaded["plain56"] = study.load_run(write_run(tmp_path / "more", "plain56", 14, 15, epochs_done=2, planned=40))
    loaded["resnet56"] = study.load_run(tmp_path / "absent" / "resnet56")
    result = study.verdict(loaded)
    assert result["degradation"] is None and "plain56 unfinished (2/40 epochs)" in result["plain"]["reason"]
    assert result["deeper_resnet_better"] is None and "resnet56 missing" in result["residual"]["reason"]
    assert result["reproduces_paper"] is None


def test_outputs_are_written(tmp_path):
    runs(tmp_path / "runs")
    names = ",".join(str(tmp_path / "runs" / name) for name in ("plain20", "plain56", "resnet20", "resnet56"))
    report = study.main(["--runs", names, "--output-dir", str(tmp_path / "out")])
    assert report["verdict"]["reproduces_paper"] is True
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"plain_vs_residual.{ext}" for ext in ("json", "md", "png")}
    assert "Degradation (plain56 higher training AND test error than plain20): yes" in (tmp_path / "out" / "plain_vs_residual.md").read_text()
