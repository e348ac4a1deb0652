"""Bench measurement: parity maths on known inputs, latency records, OOM / NaN / profile handling,
--verify, the results schema, the Markdown report and the plots, and the bench CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.backends import PyTorchRunner, SkippedRunner, fp32_runner
from resnet_deploy.backends.base import Runner
from resnet_deploy.bench import (
    BenchSettings,
    Thresholds,
    accuracy_metrics,
    apply_verification,
    build_results,
    is_out_of_memory,
    measure_latency,
    parity_metrics,
    predict,
    raise_if_failed,
    run_benchmark,
    sweep_latency,
    verify_results,
)
from resnet_deploy.cli import main
from resnet_deploy.data import synthetic_dataset
from resnet_deploy.errors import UserError, VerificationError
from resnet_deploy.models import create_model
from resnet_deploy.report import RESULTS_SCHEMA, render_markdown, write_report

FAST = dict(warmup_iterations=1, warmup_seconds=0.0, min_iterations=3, min_seconds=0.0, max_seconds=0.5)


class FakeRunner(Runner):
    """A CPU runner with controllable failures: OOM from a batch size on, NaN outputs, a max batch."""

    backend = "onnxruntime"

    def __init__(self, name="fake", precision="fp32", oom_from=None, nan=False, max_batch=None, logits=None, classes=10):
        super().__init__(name, precision)
        self.oom_from, self.nan, self.classes, self.fixed_logits = oom_from, nan, classes, logits
        self.max_batch_size = max_batch
        self.seen: list[int] = []

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _prepare(self, batch):
        return np.asarray(batch, dtype=np.float32)

    def run_prepared(self, staged):
        size = staged.shape[0]
        self.seen.append(size)
        if self.oom_from is not None and size >= self.oom_from:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = staged.reshape(size, -1)[:, : self.classes].copy()
        if self.nan and size > 1:
            out[0, 0] = np.nan
        return out


@pytest.fixture(scope="module")
def small():
    return synthetic_dataset(train_size=64, test_size=96)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resnet20").eval()


# ---------------------------------------------------------------------------- parity maths


def test_parity_metrics_on_known_inputs():
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 3.0]])
    candidate = reference.copy()
    candidate[0] = [0.0, 0.5, 0.0]  # argmax changes 0 -> 1; |diff| 1.0, 0.5, 0
    candidate[3, 2] = 3.25  # same argmax, |diff| 0.25
    result = parity_metrics(candidate, reference)
    assert result["agreement"] == pytest.approx(75.0)
    assert result["max_abs_diff"] == pytest.approx(1.0)
    assert result["mean_abs_diff"] == pytest.approx((1.0 + 0.5 + 0.25) / 12)
    assert parity_metrics(reference, reference) == {"agreement": 100.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0}
    with pytest.raises(ValueError, match="shapes differ"):
        parity_metrics(reference[:2], reference)


def test_accuracy_metrics_deltas_against_baseline():
    labels = np.array([0, 1, 2, 0])
    base_logits = np.eye(3)[[0, 1, 2, 1]].astype(np.float32)  # 3 of 4 right
    base = accuracy_metrics(base_logits, labels, None, None)
    assert base["top1"] == pytest.approx(75.0) and base["agreement"] == 100.0 and base["delta_top1"] == 0.0
    worse = np.eye(3)[[0, 2, 2, 1]].astype(np.float32)  # 2 of 4 right; disagrees on one image
    row = accuracy_metrics(worse, labels, base_logits, base)
    assert row["top1"] == pytest.approx(50.0)
    assert row["delta_top1"] == pytest.approx(-25.0)
    assert row["agreement"] == pytest.approx(75.0)
    assert row["max_abs_diff"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- latency


def test_measure_latency_record_is_consistent(model):
    runner = fp32_runner(model, threads=1)
    with runner:
        entry = measure_latency(runner, np.zeros((4, 3, 32, 32), np.float32), BenchSettings(**FAST))
    assert entry["status"] == "ok" and entry["batch_size"] == 4
    assert entry["iterations"] >= 3 and entry["warmup_iterations"] >= 1
    assert 0 < entry["min_ms"] <= entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"]
    assert entry["images_per_sec"] == pytest.approx(4 / (entry["mean_ms"] / 1000))
    assert entry["timer"] == "perf_counter_ns" and entry["host_device_copies"] == "none (cpu)"
    assert entry["memory_kind"] == "process_rss" and entry["peak_memory_mb"] > 10


def test_out_of_memory_ends_the_sweep_with_the_largest_batch_that_fitted():
    runner = FakeRunner(name="gpu-like", oom_from=64)
    settings = BenchSettings(batch_sizes=[256, 8, 1, 64], **FAST)
    with runner:
        entries = sweep_latency(runner, settings)
    by_size = {e["batch_size"]: e for e in entries}
    assert [e["batch_size"] for e in entries] == [1, 8, 64, 256]
    assert by_size[1]["status"] == by_size[8]["status"] == "ok"
    assert by_size[64]["status"] == "oom"
    assert "at batch 64" in by_size[64]["message"] and "largest batch that fitted was 8" in by_size[64]["message"]
    assert by_size[256]["status"] == "skipped"
    assert 256 not in runner.seen, "a batch larger than one that ran out of memory is not tried"


def test_is_out_of_memory_recognises_backend_messages():
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_batch_over_engine_profile_is_a_clear_error_and_accuracy_respects_it(small):
    runner = FakeRunner(max_batch=8)
    settings = BenchSettings(batch_sizes=[4, 32], **FAST)
    with runner:
        entries = sweep_latency(runner, settings)
        assert entries[0]["status"] == "ok"
        assert entries[1]["status"] == "error" and "larger than the engine's optimization profile allows (max batch 8)" in entries[1]["message"]
        runner.seen.clear()
        logits = predict(runner, small.test_images, small.normalization, batch_size=500)
    assert logits.shape == (96, 10) and max(runner.seen) == 8


def test_nonfinite_outputs_are_reported_with_backend_and_batch(small, model):
    runners = [fp32_runner(model, threads=1), FakeRunner(name="nan-backend", nan=True)]
    measured = run_benchmark(runners, small.test_images, small.test_labels, small.normalization, BenchSettings(batch_sizes=[1, 4], **FAST))
    row = measured["rows"][1]
    assert row["status"] == "nonfinite"
    assert "nan-backend produced NaN" in row["reason"] and "accuracy pass, batch 0 of size" in row["reason"]
    # Latency alone also catches it, per batch size.
    with FakeRunner(name="nan-backend", nan=True) as runner:
        entries = sweep_latency(runner, BenchSettings(batch_sizes=[1, 4], **FAST))
    assert entries[0]["status"] == "ok" and entries[1]["status"] == "nonfinite"
    assert "batch size 4" in entries[1]["message"]


# ---------------------------------------------------------------------------- run + verify


def _perturbed(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    import copy

    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(scale * parameter.abs().mean() * torch.randn(parameter.shape, generator=generator))
    return noisy


@pytest.fixture(scope="module")
def trained(synthetic_checkpoint, synthetic):
    """The shared synthetic-set ResNet20 (one epoch: well above chance on its test split)."""
    from resnet_deploy.checkpoint import load_checkpoint

    return load_checkpoint(synthetic_checkpoint), synthetic, synthetic_checkpoint


def test_verify_fails_on_a_perturbed_model_and_names_the_row(trained):
    loaded, data, _ = trained
    runners = [
        fp32_runner(loaded.model, threads=1),
        PyTorchRunner(loaded.model, name="same-fp32", threads=1),
        PyTorchRunner(_perturbed(loaded.model, 3.0), name="perturbed-int8", precision="int8", threads=1),
    ]
    settings = BenchSettings(batch_sizes=[8], **FAST)
    measured = run_benchmark(runners, data.test_images, data.test_labels, loaded.normalization, settings)
    rows = {row["name"]: row for row in measured["rows"]}
    assert rows["same-fp32"]["accuracy"]["agreement"] == 100.0
    assert rows["same-fp32"]["accuracy"]["max_abs_diff"] == 0.0
    assert rows["perturbed-int8"]["accuracy"]["delta_top1"] < -0.5, "the perturbation must cost accuracy for this test to mean anything"
    failures = verify_results(measured, Thresholds())
    assert [f["row"] for f in failures] == ["perturbed-int8"]
    assert "top-1 drop" in failures[0]["message"]
    # Loose enough thresholds pass; an FP32 gate above 100% cannot.
    assert verify_results(measured, Thresholds(int8_max_top1_drop=100.0)) == []
    results = _results(measured, loaded)
    apply_verification(results, Thresholds())
    with pytest.raises(VerificationError, match="perturbed-int8"):
        raise_if_failed(results)


def _results(measured: dict, loaded) -> dict:
    return build_results(
        measured,
        run_name="unit",
        model={"spec": loaded.spec.to_dict(), "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256}, "num_classes": 10},
        dataset={"name": "synthetic", "split": "test", "size": 512, "source": "synthetic"},
        command=["pytest"],
    )


def test_results_follow_the_schema_and_report_files_are_written(trained, tmp_path):
    import jsonschema

    loaded, data, _ = trained
    runners = [
        fp32_runner(loaded.model, threads=1),
        FakeRunner(name="gpu-like", oom_from=64),
        SkippedRunner("tensorrt-int8", "tensorrt", "int8", "cuda:0", "no GPU here"),
    ]
    measured = run_benchmark(
        runners, data.test_images, data.test_labels, loaded.normalization, BenchSettings(batch_sizes=[1, 64], accuracy_batch_size=32, **FAST)
    )
    results = _results(measured, loaded)
    apply_verification(results, Thresholds())
    jsonschema.validate(results, RESULTS_SCHEMA)
    paths = write_report(results, tmp_path / "run")
    reread = json.loads(paths["results"].read_text())
    jsonschema.validate(reread, RESULTS_SCHEMA)
    assert reread["rows"][0]["latency"][0]["speedup_vs_baseline"] == pytest.approx(1.0)
    for key in ("latency_plot", "accuracy_plot"):
        data_bytes = paths[key].read_bytes()
        assert data_bytes[:8] == b"\x89PNG\r\n\x1a\n" and len(data_bytes) > 10_000
    markdown = paths["markdown"].read_text()
    assert "**Skipped**: 1 row cannot run here: `tensorrt-int8` (no GPU here)" in markdown
    # Other processes' CPU time, measured over the rows' own window (Linux: /proc/stat).
    competition = reread["hardware"]["cpu_competition"]
    assert competition["cpus"] == len(os.sched_getaffinity(0)) and 0 <= competition["other_share"] <= 1
    assert "| `gpu-like` | 64 | **oom**" in markdown
    assert "## Verification" in markdown
    # The schema can fail: a row without a status, or a latency entry without figures.
    broken = json.loads(json.dumps(results))
    del broken["rows"][0]["status"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RESULTS_SCHEMA)
    broken = json.loads(json.dumps(results))
    del broken["rows"][0]["latency"][0]["p50_ms"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RESULTS_SCHEMA)


def test_markdown_explains_u8s8_against_s8s8():
    def row(name, label, speed):
        return {
            "name": name, "backend": "onnxruntime", "precision": "int8", "device": "cpu", "status": "ok", "reason": None,
            "settings": {"quantization": {"label": label, "activations": "uint8" if label == "U8S8" else "int8", "weights": "int8", "format": "QDQ"}},
            "accuracy": None,
            "latency": [{"batch_size": 64, "status": "ok", "message": None, "iterations": 5, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0,
                         "mean_ms": 1.0, "min_ms": 1.0, "images_per_sec": speed, "speedup_vs_baseline": None, "peak_memory_mb": 1.0,
                         "memory_kind": "process_rss", "host_device_copies": "none (cpu)", "timer": "perf_counter_ns"}],
        }

    results = {
        "run_name": "x", "hardware": {"cpu_model": "cpu", "physical_cores": 2, "gpus": []}, "software": {"torch": "2", "python": "3"},
        "model": {"spec": {"name": "resnet20"}, "checkpoint": {"path": "c", "sha256": "s"}, "num_classes": 10},
        "dataset": {"name": "cifar10", "size": 10}, "settings": {"batch_sizes": [64]}, "baseline": "pytorch-fp32",
        "rows": [row("onnxruntime-int8-u8s8", "U8S8", 7000.0), row("onnxruntime-int8-s8s8", "S8S8", 1600.0)], "verification": None,
    }
    text = render_markdown(results)
    assert "U8S8 vs S8S8" in text and "7,000 images/s" in text and "1,600 images/s" in text and "(4.38x)" in text


def test_baseline_must_run(small):
    with pytest.raises(UserError, match="baseline"):
        run_benchmark([FakeRunner(name="other")], small.test_images, small.test_labels, small.normalization, BenchSettings(**FAST))


def _report_input(rows: list[dict], **hardware) -> dict:
    """The fields render_markdown reads, around ``rows``."""
    return {
        "run_name": "x", "hardware": {"cpu_model": "cpu", "physical_cores": 2, "gpus": [], **hardware},
        "software": {"torch": "2", "python": "3"}, "model": {"spec": {"name": "resnet20"}, "checkpoint": {"path": "c", "sha256": "s"}, "num_classes": 10},
        "dataset": {"name": "cifar10", "size": 10}, "settings": {"batch_sizes": [1]}, "baseline": "pytorch-fp32", "rows": rows, "verification": None,
    }  # fmt: skip


def _row(name: str, status: str = "ok", reason: str | None = None) -> dict:
    return {"name": name, "backend": "pytorch", "precision": "fp32", "device": "cpu", "status": status, "reason": reason,
            "settings": {}, "accuracy": None, "latency": []}  # fmt: skip


def test_rows_that_cannot_run_here_are_one_line_in_the_report_and_the_console(small, capsys, caplog, monkeypatch):
    """Skipped rows: one line (names grouped by reason) in the run's status lines (logging, which the
    CLI prints), report.md and the CLI's summary, none in the tables; results keep every skipped row;
    failed rows stay listed."""
    import logging

    from resnet_deploy import progress
    from resnet_deploy.cli.bench_commands import print_bench_summary

    monkeypatch.setattr(progress, "_enabled", True)
    gpu = "fp16 autocast rows run on a GPU"
    runners = [
        FakeRunner(name="pytorch-fp32"),
        SkippedRunner("pytorch-fp16", "pytorch", "fp16", "cpu", gpu),
        SkippedRunner("pytorch-bf16", "pytorch", "bf16", "cpu", gpu),
        SkippedRunner("tensorrt", "tensorrt", "int8", "cuda:0", "no export directory given"),
        FakeRunner(name="broken", nan=True),
    ]
    with caplog.at_level(logging.INFO, logger="resnet_deploy"):
        measured = run_benchmark(runners, small.test_images, small.test_labels, small.normalization, BenchSettings(batch_sizes=[1], **FAST))
    console = [record.getMessage() for record in caplog.records]
    capsys.readouterr()  # the progress bars: not what the summary below is checked on
    assert [r["name"] for r in measured["rows"] if r["status"] == "skipped"] == ["pytorch-fp16", "pytorch-bf16", "tensorrt"]
    expected = f"3 rows cannot run here: pytorch-fp16, pytorch-bf16 ({gpu}); tensorrt (no export directory given)"
    assert [line for line in console if "pytorch-fp16" in line or "tensorrt" in line] == [expected]

    results = _report_input(measured["rows"])
    report = render_markdown(results).splitlines()
    mentions = [line for line in report if "pytorch-bf16" in line or "`tensorrt`" in line]
    assert mentions == [f"**Skipped**: 3 rows cannot run here: `pytorch-fp16`, `pytorch-bf16` ({gpu}); `tensorrt` "
                        "(no export directory given) (results.json keeps each row with its reason)."]
    assert "## Failed rows" in report and any(line.startswith("- `broken` **nonfinite**") for line in report)

    print_bench_summary(results, {})
    summary = capsys.readouterr().err.splitlines()
    assert [line for line in summary if "pytorch-bf16" in line or "tensorrt" in line] == [expected]
    assert any(line.startswith("broken nonfinite:") for line in summary)


# ---------------------------------------------------------------------------- CPU competition


PROC_STAT = """cpu  300 10 60 1000 50 5 5 7 0 0
cpu0 100 0 20 500 20 0 0 0 0 0
cpu1 100 10 20 300 10 5 5 7 0 0
cpu2 100 0 20 200 20 0 0 0 0 0
intr 5 6

"""


def test_busy_seconds_sums_non_idle_time_of_the_usable_cpus():
    from resnet_deploy.environment import busy_seconds

    # cpu0: user+system 120 (iowait is idle); cpu1: user, nice, system, irq, softirq, steal = 147.
    assert busy_seconds(PROC_STAT, {0, 1}, 100) == (pytest.approx(2.67), 2)
    assert busy_seconds(PROC_STAT, None, 100) == (pytest.approx(3.87), 3)
    assert busy_seconds(PROC_STAT, {1}, 50) == (pytest.approx(2.94), 1)


def test_cpu_competition_counts_other_processes_not_this_one():
    from resnet_deploy.environment import COMPETITION_WARN_SHARE, CpuSnapshot, cpu_competition, cpu_snapshot

    before = CpuSnapshot(wall_seconds=10.0, busy_seconds=100.0, own_seconds=50.0, cpus=2)
    # Both cores busy with this process's own work (a pipeline right after its own training: load ~2).
    alone = cpu_competition(before, CpuSnapshot(20.0, 119.0, 68.5, 2))
    assert alone == {"window_seconds": 10.0, "cpus": 2, "other_cpu_seconds": 0.5, "other_share": 0.025,
                     "warn_share": COMPETITION_WARN_SHARE, "competing": False}  # fmt: skip
    # Another process took 11.5 of the 20 core-seconds.
    shared = cpu_competition(before, CpuSnapshot(20.0, 130.0, 68.5, 2))
    assert shared["other_cpu_seconds"] == 11.5 and shared["other_share"] == 0.575 and shared["competing"] is True
    # Counter granularity can make own time exceed the busy time: never negative.
    assert cpu_competition(before, CpuSnapshot(20.0, 110.0, 61.0, 2))["other_cpu_seconds"] == 0.0
    # Unknown (no /proc/stat): None, not a guess.
    assert cpu_competition(None, before) is None and cpu_competition(before, None) is None

    def unreadable():
        raise FileNotFoundError("/proc/stat")

    assert cpu_snapshot(unreadable) is None
    snapshot = cpu_snapshot(lambda: PROC_STAT)
    assert snapshot.cpus == len({0, 1, 2} & os.sched_getaffinity(0))


def test_report_warns_of_competition_measured_not_of_the_load_average():
    from resnet_deploy.environment import CpuSnapshot, cpu_competition

    before = CpuSnapshot(10.0, 100.0, 50.0, 2)
    load = [2.03, 1.5, 1.2]

    def line(competition):
        text = render_markdown(_report_input([_row("pytorch-fp32")], load_average=load, cpu_competition=competition))
        return next(l for l in text.splitlines() if l.startswith(("**Other processes**", "**Load average**")))

    quiet = line(cpu_competition(before, CpuSnapshot(20.0, 119.0, 68.5, 2)))
    assert quiet == "**Other processes** used 2.5% of the 2 usable CPUs' time while the rows ran (0.5 CPU-s in 10.0 s)."
    busy = line(cpu_competition(before, CpuSnapshot(20.0, 130.0, 68.5, 2)))
    assert busy.startswith("**Other processes** used 57.5% of the 2 usable CPUs' time") and "(over 10%): other processes were competing" in busy
    unmeasured = line(None)
    assert unmeasured.startswith("**Load average** when the run started (1/5/15 min): 2.03") and "competing" not in unmeasured


# ---------------------------------------------------------------------------- CLI


def test_bench_cli_writes_report(trained, tmp_path):
    _, _, checkpoint = trained
    result = CliRunner().invoke(
        main,
        ["-q", "bench", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--backend", "pytorch", "--batch-sizes", "1,4",
         "--min-time", "0", "--max-time", "0.3", "--min-iterations", "2", "--warmup", "1", "--threads", "1",
         "--name", "cli", "--output-root", str(tmp_path), "--verify"],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "cli"
    results = json.loads((folder / "results.json").read_text())
    assert results["verification"]["passed"] is True
    assert results["rows"][0]["name"] == "pytorch-fp32" and results["rows"][0]["settings"]["torch_threads"] == 1
    assert results["command"][:2] == ["resnet-deploy", "-q"] or results["command"][0] == "resnet-deploy"
    assert {p.name for p in folder.iterdir()} >= {"results.json", "report.md", "latency_vs_batch.png", "accuracy_vs_throughput.png"}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--backend", "directml"], "--backend accepts"),
        (["--precision", "int4"], "--precision accepts"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--verify", "--no-accuracy"], "--verify needs the accuracy pass"),
        (["--device", "tpu"], "--device must be"),
        # the one device parser (backends.parse_device): the CLI's own regex let these through
        (["--device", "cuda:\u0663"], "--device must be cpu, cuda or cuda:N with N a GPU number"),
        (["--device", "cuda:000001"], "--device must be cpu, cuda or cuda:N with N a GPU number"),
        ([], "give --checkpoint, --export"),
    ],
)
def test_bench_cli_user_errors(arguments, message):
    result = CliRunner().invoke(main, ["-q", "bench", "--dataset", "synthetic", *arguments])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("command", ["bench", "pipeline"])
def test_every_bench_option_default_is_the_library_default(command):
    """The options' defaults, turned into settings as the command does, are exactly RunnerOptions(),
    BenchSettings() and Thresholds(): a default changed on one side only fails here."""
    import dataclasses

    from resnet_deploy.backends import RunnerOptions
    from resnet_deploy.bench import BenchSettings, Thresholds
    from resnet_deploy.cli.bench_commands import make_bench_config

    defaults = {param.name: param.default for param in main.commands[command].params}
    defaults["verify"] = True  # pipeline's default; bench's --verify: both give Thresholds
    runner_options, settings, thresholds = make_bench_config(defaults)

    def as_lists(options):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}

    assert as_lists(runner_options) == as_lists(RunnerOptions())
    assert settings == BenchSettings() and thresholds == Thresholds()


def test_bench_cli_verify_fails_on_a_perturbed_export_and_names_the_row(trained, tmp_path):
    """An 'export' whose FP32 ONNX comes from perturbed weights: --verify exits 1 naming that row,
    after writing the report that shows why."""
    import warnings

    from resnet_deploy.fileio import sha256_file, write_json

    loaded, _, checkpoint = trained
    export_dir = tmp_path / "exports" / "perturbed"
    export_dir.mkdir(parents=True)
    onnx_path = export_dir / "model-fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_perturbed(loaded.model, 0.3), (torch.randn(2, 3, 32, 32),), str(onnx_path), dynamo=True,
                          input_names=["input"], output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    write_json(export_dir / "manifest.json", {
        "format": "resnet-deploy/export", "version": 1, "checkpoint": {"path": str(checkpoint), "sha256": loaded.sha256},
        "model": loaded.spec.to_dict(), "normalization": loaded.normalization.to_dict(), "classes": loaded.classes,
        "input_name": "input", "output_name": "logits",
        "artifacts": [{"kind": "onnx", "precision": "fp32", "scheme": None, "path": "model-fp32.onnx",
                       "sha256": sha256_file(onnx_path), "dynamic_batch": True, "opset": 18}],
    })
    result = CliRunner().invoke(
        main,
        ["-q", "bench", "--export", str(export_dir), "--dataset", "synthetic", "--backend", "onnxruntime", "--no-latency",
         "--threads", "1", "--name", "perturbed", "--output-root", str(tmp_path / "results"), "--verify"],
    )
    assert result.exit_code == 1, result.output
    assert "verification failed" in result.output and "onnxruntime-fp32: top-1 agreement with FP32 PyTorch" in result.output
    results = json.loads((tmp_path / "results" / "perturbed" / "results.json").read_text())
    assert results["verification"]["passed"] is False
    assert [f["row"] for f in results["verification"]["failures"]] == ["onnxruntime-fp32"]
    assert "**FAILED**" in (tmp_path / "results" / "perturbed" / "report.md").read_text()


def test_out_of_memory_in_the_accuracy_pass_is_a_row_error(small, model):
    runners = [fp32_runner(model, threads=1), FakeRunner(name="gpu-like", oom_from=64)]
    measured = run_benchmark(runners, small.test_images, small.test_labels, small.normalization,
                             BenchSettings(batch_sizes=[1], accuracy_batch_size=96, **FAST))
    row = measured["rows"][1]
    assert row["status"] == "error" and "ran out of memory" in row["reason"] and "--accuracy-batch-size" in row["reason"]
    assert measured["rows"][0]["status"] == "ok", "the other rows still ran"
