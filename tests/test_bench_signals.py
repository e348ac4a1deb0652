"""SIGINT / SIGTERM during a benchmark: the measurements taken so far survive.

The CLI tests run the real ``resnet-deploy bench`` (and ``pipeline``) as a separate process, wait
until its first latency measurement is logged, send the signal and check what the process left:
exit code 128 + signal, no traceback, a results.json valid against the schema that says it was
interrupted and by which signal, every measurement logged before the signal kept, and nothing
half-measured reported as ok. The in-process test sends the signal from inside a runner, at a known
point, to check how rows that were not reached are marked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from reliability_support import figures, traceback_in  # noqa: F401 - figures is a fixture
from resnet_deploy.backends import PyTorchRunner, fp32_runner
from resnet_deploy.bench import BenchSettings, run_benchmark
from resnet_deploy.checkpoint import load_checkpoint
from resnet_deploy.report import RESULTS_SCHEMA, render_markdown

SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
# Six batch sizes of at least 0.4 s each after a 0.2 s warm-up: ~4 s of sweep, so a signal sent after the
# first measurement always lands inside the sweep, however slow the machine.
SWEEP = ["--batch-sizes", "1,2,4,8,16,32", "--min-time", "0.4", "--max-time", "0.6", "--min-iterations", "5", "--warmup", "1", "--threads", "1"]
MEASURED = re.compile(r"^(?P<row>\S+) latency bs (?P<batch>\d+): ", re.MULTILINE)


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """The real CLI in its own process, progress on (the test reads it), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("RESNET_DEPLOY_QUIET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_deploy.cli", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=log.open("w"),
    )  # fmt: skip


def _wait_for_first_measurement(process: subprocess.Popen, log: Path, timeout: float = 240.0) -> list[tuple[str, int]]:
    """Poll the progress log until a latency measurement is reported; return those reported so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        measured = [(m["row"], int(m["batch"])) for m in MEASURED.finditer(log.read_text())]
        if measured:
            return measured
        if process.poll() is not None:
            raise AssertionError(f"the command ended (exit {process.returncode}) before measuring:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no latency measurement within {timeout} s:\n{log.read_text()[-3000:]}")


def _check_partial_results(folder: Path, signum: int, stderr: str, before_signal: list[tuple[str, int]]) -> dict:
    """What every interrupted run must leave: valid, flagged, and holding what was measured."""
    assert "Traceback" not in stderr, stderr
    results_path = folder / "results.json"
    assert f"partial results written to {results_path}" in stderr, stderr
    results = json.loads(results_path.read_text())
    jsonschema.validate(results, RESULTS_SCHEMA)
    name = signal.Signals(signum).name
    assert results["interrupted"]["signal"] == signum and results["interrupted"]["signal_name"] == name
    assert results["verification"] is None, "an incomplete run must not claim a verdict"
    rows = {row["name"]: row for row in results["rows"]}
    baseline = rows["pytorch-fp32"]
    assert baseline["accuracy"] is not None and baseline["accuracy"]["count"] > 0  # measured before the sweep
    entries = {entry["batch_size"]: entry for entry in baseline["latency"]}
    # Every measurement logged before the signal is in the results, complete.
    for row, batch in before_signal:
        entry = rows[row]["latency"] and {e["batch_size"]: e for e in rows[row]["latency"]}[batch]
        assert entry["status"] == "ok" and entry["iterations"] >= 5 and entry["images_per_sec"] > 0, entry
    # Nothing is reported as ok that the process did not finish measuring (and log).
    logged = {(m["row"], int(m["batch"])) for m in MEASURED.finditer(stderr)}
    ok = {(row["name"], e["batch_size"]) for row in results["rows"] for e in row["latency"] if e["status"] == "ok"}
    assert ok == logged, (ok, logged)
    # The sweep was cut short: the rest is marked, not dropped.
    not_measured = [batch for batch, entry in entries.items() if entry["status"] != "ok"]
    assert not_measured, "the signal must have landed inside the sweep"
    assert all(entries[batch]["status"] == "interrupted" and name in entries[batch]["message"] for batch in not_measured)
    assert baseline["status"] == "interrupted" and name in baseline["reason"]
    assert sorted(entries) == [1, 2, 4, 8, 16, 32]
    report = (folder / "report.md").read_text()
    assert "**Interrupted**" in report and name in report
    return results


@pytest.mark.slow
@SIGNALS
def test_bench_interrupted_writes_partial_results(tmp_path, synthetic_checkpoint, signum, figures):
    """`bench` stopped after its first latency measurement: exit 128+N, partial results, no traceback."""
    log = tmp_path / "stderr.txt"
    args = ["bench", "--checkpoint", str(synthetic_checkpoint), "--dataset", "synthetic", "--test-subset", "256",
            "--backend", "pytorch,onnxruntime", "--precision", "fp32", *SWEEP, "--verify",
            "--name", "run", "--output-root", str(tmp_path)]  # fmt: skip
    process = _start(args, tmp_path, log)
    before = _wait_for_first_measurement(process, log)
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, _ = process.communicate(timeout=120)
    stopped_s = time.monotonic() - sent
    stderr = log.read_text()
    seen = {"exit_code": process.returncode, "tracebacks": int(traceback_in(stderr)), "seconds from signal to exit": round(stopped_s, 1)}
    figures(f"bench_{signal.Signals(signum).name}", seen)  # recorded before any check: a failing run reports what it saw
    assert process.returncode == 128 + signum, stderr
    results = _check_partial_results(tmp_path / "run", signum, stderr, before)
    assert json.loads(stdout)["results"] == str(tmp_path / "run" / "results.json")  # where they are, on stdout too
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"results.json", "report.md", "latency_vs_batch.png", "accuracy_vs_throughput.png"}
    rows = {row["name"]: row for row in results["rows"]}
    assert rows["onnxruntime"]["status"] == "skipped"  # a row that could not run keeps its own status
    ok = [e["batch_size"] for e in rows["pytorch-fp32"]["latency"] if e["status"] == "ok"]
    marked = [e["batch_size"] for e in rows["pytorch-fp32"]["latency"] if e["status"] == "interrupted"]
    figures(f"bench_{signal.Signals(signum).name}", {**seen, "batch sizes measured": ok, "batch sizes marked interrupted": len(marked)})


@pytest.mark.slow
def test_pipeline_interrupted_in_its_bench_stage(tmp_path, synthetic_checkpoint, figures):
    """`pipeline` stopped by SIGTERM during its bench stage behaves like `bench`, and records the stage."""
    log = tmp_path / "stderr.txt"
    args = ["pipeline", "--workdir", str(tmp_path), "--checkpoint", str(synthetic_checkpoint), "--dataset", "synthetic",
            "--test-subset", "256", "--quantization", "none", "--no-fp16", "--no-tensorrt", "--backend", "pytorch",
            "--precision", "fp32", *SWEEP, "--name", "pipe"]  # fmt: skip
    process = _start(args, tmp_path, log)
    before = _wait_for_first_measurement(process, log)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    stderr = log.read_text()
    seen = {"exit_code": process.returncode, "tracebacks": int(traceback_in(stderr))}
    figures("pipeline_bench_SIGTERM", seen)  # recorded before any check, completed below
    assert process.returncode == 128 + signal.SIGTERM, stderr
    folder = tmp_path / "benchmarks" / "results" / "pipe"
    results = _check_partial_results(folder, signal.SIGTERM, stderr, before)
    stages = {stage["name"]: stage for stage in json.loads((folder / "pipeline.json").read_text())["stages"]}
    assert stages["bench"]["status"] == "failed" and "interrupted by SIGTERM" in stages["bench"]["reason"]
    assert stages["export-tensorrt"]["status"] == "done"
    assert {stage["name"]: stage["status"] for stage in results["pipeline"]["stages"]}["bench"] == "failed"
    figures("pipeline_bench_SIGTERM", {**seen, "bench stage": stages["bench"]["status"]})


class _SignalOnFirstLatencyCall(PyTorchRunner):
    """A real PyTorch row that sends the process a signal the first time it is timed (after its
    accuracy pass): the signal arrives at a known point of a real measurement."""

    def __init__(self, model, signum: int, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.signum, self.calls = signum, 0

    def infer(self, batch):
        self.calls += 1
        output = super().infer(batch)
        if self.calls == 2:  # call 1 is the accuracy pass (one batch), call 2 the first timed call
            os.kill(os.getpid(), self.signum)
        return output


@SIGNALS
def test_rows_not_reached_are_marked_interrupted(synthetic_checkpoint, synthetic, signum):
    """Signal during the second row's first measurement: the baseline stays complete, that row keeps its
    accuracy and marks every batch size interrupted, the third row is marked 'not run'."""
    loaded = load_checkpoint(synthetic_checkpoint)
    data = synthetic.subset(None, 64)
    runners = [
        fp32_runner(loaded.model, threads=1),
        _SignalOnFirstLatencyCall(loaded.model, signum, name="second", threads=1),
        PyTorchRunner(loaded.model, name="third", threads=1),
    ]
    settings = BenchSettings(batch_sizes=[1, 4], accuracy_batch_size=64, warmup_iterations=1, warmup_seconds=0.0,
                             min_iterations=3, min_seconds=0.0, max_seconds=0.2)  # fmt: skip
    handler = signal.getsignal(signum)
    measured = run_benchmark(runners, data.test_images, data.test_labels, loaded.normalization, settings)
    assert signal.getsignal(signum) is handler, "the previous handler must be restored"
    rows = {row["name"]: row for row in measured["rows"]}
    name = signal.Signals(signum).name
    assert rows["pytorch-fp32"]["status"] == "ok" and [e["status"] for e in rows["pytorch-fp32"]["latency"]] == ["ok", "ok"]
    second = rows["second"]
    assert second["status"] == "interrupted" and second["accuracy"]["agreement"] == 100.0
    assert [e["status"] for e in second["latency"]] == ["interrupted", "interrupted"]
    assert "during this measurement" in second["latency"][0]["message"] and "before this batch size" in second["latency"][1]["message"]
    assert rows["third"]["status"] == "interrupted" and rows["third"]["reason"].startswith(f"not run: the benchmark was interrupted by {name}")
    assert rows["third"]["accuracy"] is None and rows["third"]["latency"] == []
    assert measured["interrupted"] == {
        "signal": signum, "signal_name": name, "row": "second", "phase": "latency",
        "message": f"interrupted by {name} during the latency sweep of row second",
    }  # fmt: skip
    assert np.isfinite(rows["pytorch-fp32"]["latency"][1]["images_per_sec"])
    # The rendered report says so at the top.
    results = {
        **measured, "run_name": "unit", "hardware": {"cpu_model": "cpu", "physical_cores": 1, "gpus": []},
        "software": {"torch": "2", "python": "3"}, "dataset": {"name": "synthetic", "size": 64}, "verification": None,
        "model": {"spec": {"name": "resnet20"}, "checkpoint": {"path": "c", "sha256": "s"}, "num_classes": 10},
    }  # fmt: skip
    text = render_markdown(results)
    assert text.splitlines()[2].startswith("> **Interrupted**") and "Not run: the benchmark was interrupted" in text
