"""The GPU suite (benchmarks/gpu_suite.py) and its importer (benchmarks/gpu_results.py), on the CPU.

The smoke run goes through every stage's real code path with tiny settings; one stage is given a box
too small for it, so the run also proves that an overrun is recorded as timed out and that the later
stages still run. A second run is killed mid-stage to prove that results.json keeps what was done and
that no stage process outlives the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_results  # noqa: E402
import gpu_suite  # noqa: E402

OVERRUN_STAGE = "train-resnet50"
FINAL_STATUSES = {"ok", "skipped", "failed", "timed_out", "not_runnable", "interrupted"}


def run_suite(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RESNET_DEPLOY_QUIET="1")
    return subprocess.run([sys.executable, str(SUITE), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    """One smoke run whose ResNet50 training gets a 1.5 s box. The deadline is generous so that a slow
    CI machine shows up as long stage times, not as skipped stages."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    completed = run_suite("--smoke", "--out", str(out), "--deadline", "900", "--box-of", f"{OVERRUN_STAGE}=1.5", timeout=1000)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


def stages(out: Path) -> dict[str, dict]:
    results = json.loads((out / "results.json").read_text())
    return {record["name"]: record for record in results["stages"]}


@pytest.mark.slow
def test_smoke_run_records_every_stage(smoke_out):
    records = stages(smoke_out)
    assert list(records) == gpu_suite.stage_names(gpu_suite.smoke_settings("o", "w", 1.0))
    assert {name: r["status"] for name, r in records.items() if r["status"] not in FINAL_STATUSES} == {}
    for name in ("environment", "data", "train-resnet20", "train-resnet56", "bench-resnet20", "bench-resnet56", "int8"):
        assert records[name]["status"] == "ok", (name, records[name].get("reason"))
    # No GPU here: the TensorRT stage says why it cannot run instead of failing.
    assert records["tensorrt"]["status"] in ("not_runnable", "skipped"), records["tensorrt"]
    assert records["tensorrt"]["reason"]


@pytest.mark.slow
def test_smoke_run_measures_what_the_report_shows(smoke_out):
    records = stages(smoke_out)
    summary = records["train-resnet20"]["result"]["summary"]
    assert summary["epochs_done"] >= 1 and summary["curve"][-1]["train_s"] == pytest.approx(summary["train_s"], abs=1e-3)
    rows = {row["name"]: row for row in records["bench-resnet20"]["result"]["bench"]["rows"]}
    assert rows["pytorch-fp32"]["accuracy"]["agreement"] == 100.0
    assert rows["onnxruntime-fp32"]["status"] == "ok" and rows["onnxruntime-fp32"]["accuracy"]["agreement"] > 90
    assert rows["pytorch-fp16"]["status"] == "skipped"  # fp16 autocast needs a GPU
    assert "CUDA" in rows["pytorch-bf16-channels-last-cudagraph"]["reason"]
    int8 = records["int8"]["result"]["rows"]
    assert [row["status"] for row in int8] == ["ok", "ok"] and all(0 <= row["int8_top1"] <= 100 for row in int8)
    files = {path.name for path in smoke_out.iterdir()}
    assert {"results.json", "report.md", "resnet20.pt", "resnet56.pt", "time_to_accuracy.png", "latency_resnet20.png"} <= files
    assert len(files) <= 8  # what a device call brings back
    from resnet_deploy.checkpoint import load_checkpoint

    assert load_checkpoint(smoke_out / "resnet20.pt").spec.name == records["train-resnet20"]["result"]["recipe"]["model"]


@pytest.mark.slow
def test_a_stage_past_its_box_is_timed_out_and_later_stages_run(smoke_out):
    records = stages(smoke_out)
    names = list(records)
    overrun = records[OVERRUN_STAGE]
    assert overrun["status"] == "timed_out", overrun
    assert "box" in overrun["reason"]
    # SIGTERM at 1.5 s, SIGKILL at most the grace later: the box was enforced.
    grace = json.loads((smoke_out / "results.json").read_text())["settings"]["grace_s"]
    assert overrun["wall_s"] < 1.5 + grace + 3
    later = names[names.index(OVERRUN_STAGE) + 1 :]
    assert records["bench-resnet20"]["status"] == "ok" and all(records[name]["status"] in FINAL_STATUSES for name in later)
    # Its benchmark has no checkpoint to run on and says so.
    assert records["bench-resnet50"]["status"] == "skipped" and "no checkpoint" in records["bench-resnet50"]["reason"]


@pytest.mark.slow
def test_import_of_a_smoke_out_and_the_readme_table(smoke_out, tmp_path):
    with pytest.raises(ValueError, match="smoke"):
        gpu_results.import_results(smoke_out, tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## GPU\n\n{gpu_results.README_START}\nold table\n{gpu_results.README_END}\n\n## Layout\n")
    code = gpu_results.main([str(smoke_out), "--results-root", str(tmp_path / "results"), "--readme", str(readme), "--allow-smoke"])
    assert code == 0
    imported = next((tmp_path / "results").iterdir())
    assert imported.name.startswith("gpu-smoke-")
    assert sorted(p.name for p in imported.iterdir()) == sorted(p.name for p in smoke_out.iterdir())
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\n## GPU\n") and text.endswith("\n## Layout\n")
    assert "`pytorch-fp32`" in text and "resnet20" in text
    # A second import into the same folder is refused unless forced.
    assert gpu_results.main([str(smoke_out), "--results-root", str(tmp_path / "results"), "--readme", "", "--allow-smoke"]) == 2


@pytest.mark.slow
def test_a_killed_suite_keeps_finished_stages_and_leaves_no_stage_running(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RESNET_DEPLOY_QUIET="1")
    command = [sys.executable, str(SUITE), "--smoke", "--out", str(out), "--deadline", "900", "--stages", "environment,train-resnet20"]
    suite = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        record = wait_for_stage(out, "train-resnet20", "running", timeout=300)
        time.sleep(1.0)
        os.killpg(suite.pid, signal.SIGKILL)
        suite.wait(timeout=30)
    finally:
        if suite.poll() is None:
            os.killpg(suite.pid, signal.SIGKILL)
    records = stages(out)
    assert records["environment"]["status"] == "ok"
    assert records["train-resnet20"]["status"] == "running"  # what was going on when the kill came
    assert not alive_after(record["pid"], seconds=10), "the stage process outlived the killed suite"


def wait_for_stage(out: Path, name: str, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = stages(out).get(name, {})
        except (OSError, json.JSONDecodeError):  # not written yet (the writes themselves are atomic)
            record = {}
        if record.get("status") == status:
            return record
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached {status}")


def alive_after(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


# ---------------------------------------------------------------------------------------------- fast


def test_update_readme_replaces_only_between_the_markers():
    start, end = gpu_results.README_START, gpu_results.README_END
    text = f"before\n{start}\nold\n{end}\nafter\n"
    updated = gpu_results.update_readme(text, "| new |\n")
    assert updated == f"before\n{start}\n| new |\n{end}\nafter\n"
    assert gpu_results.update_readme(updated, "| new |") == updated  # idempotent
    for broken in ("no markers", f"{end}\n{start}\n", f"{start}\n{start}\n{end}\n"):
        with pytest.raises(ValueError):
            gpu_results.update_readme(broken, "x")


def probe(epoch_train_s: float = 1.0, compile_s: float = 10.0) -> dict:
    return {"epoch_train_s": epoch_train_s, "eval_s": 0.2, "checkpoint_write_s": 0.1, "compile_and_warmup_s": compile_s}


def test_plan_epochs_takes_the_tightest_limit():
    plan = gpu_suite.TrainPlan("resnet20", "resnet20", train_budget_s=60.0, max_epochs=200)
    assert gpu_suite.plan_epochs(plan, probe(), seconds_left=1000) == {
        "epochs": 60, "limited_by": "train_budget", "limits": {"box": 707, "max_epochs": 200, "train_budget": 60},
        "predicted_wall_s": pytest.approx(10 + 60 * 1.4)}
    boxed = gpu_suite.plan_epochs(plan, probe(), seconds_left=38.5)  # (38.5 - 10) / 1.4: 20 epochs fit
    assert (boxed["epochs"], boxed["limited_by"]) == (20, "box")
    assert gpu_suite.plan_epochs(plan, probe(), seconds_left=5)["epochs"] == 1  # never zero


def test_training_summary_reads_time_to_each_mark():
    settings = gpu_suite.smoke_settings("o", "w", 1.0)
    history = [{"epoch": e, "epoch_time_s": t, "test_top1": a, "train_images_per_sec": 1.0, "peak_memory_mb": 1.0}
               for e, t, a in ((1, 30.0, 80.0), (2, 10.0, 90.5), (3, 10.0, 91.3), (4, 10.0, 91.1))]
    summary = gpu_suite.training_summary(history, settings)
    assert summary["time_to"]["90"] == {"epoch": 2, "train_s": 40.0}
    assert summary["time_to"]["91.25"] == {"epoch": 3, "train_s": 50.0}
    assert summary["goal"]["met"] is True and summary["first_epoch_excess_s"] == 20.0
    assert summary["final_top1"] == 91.1 and summary["best_top1"] == 91.3
    slow = [dict(row, epoch_time_s=row["epoch_time_s"] * 2) for row in history]
    assert gpu_suite.training_summary(slow, settings)["goal"]["met"] is False  # 91.25% at 100 s > 60 s


def test_classify_ending_names_the_way_a_stage_ended():
    classify = gpu_suite.classify_ending
    assert classify("exited", 0, {}, 10, 5) == {"status": "ok", "reason": None}
    assert classify("exited", 0, {"status": "not_runnable", "reason": "r"}, 10, 5)["status"] == "not_runnable"
    assert classify("exited", 1, {"reason": "ValueError: x"}, 10, 5) == {"status": "failed", "reason": "ValueError: x"}
    assert "safe point" in classify("timed_out", gpu_suite.STOPPED_EXIT, {}, 10, 5)["reason"]
    assert "killed" in classify("timed_out", -9, {}, 10, 5)["reason"]
    assert classify("interrupted", -15, {}, 10, 5)["status"] == "interrupted"
