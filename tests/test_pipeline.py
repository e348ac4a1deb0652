"""`resnet-deploy pipeline`: end to end on a tiny subset, skip rules (current / --force / changed
inputs / cannot run here), and a failed export check that still ends in a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_deploy.cli import main

FAST_BENCH = ["--batch-sizes", "1,8", "--min-time", "0", "--max-time", "0.2", "--min-iterations", "2", "--warmup", "1", "--threads", "1"]


def run_cli(workdir: Path, *arguments: str):
    return CliRunner().invoke(main, ["-q", "pipeline", "--workdir", str(workdir), *arguments, *FAST_BENCH])


def stages(workdir: Path, name: str) -> dict[str, dict]:
    state = json.loads((workdir / "benchmarks" / "results" / name / "pipeline.json").read_text())
    return {stage["name"]: stage for stage in state["stages"]}


@pytest.mark.slow
def test_pipeline_from_nothing_then_skips_current_work(tmp_path):
    """Train -> export -> bench -> report on a tiny synthetic subset; the rerun redoes nothing; a bench
    setting change redoes only the bench; the report lists what could not run here."""
    common = ["--train", "--dataset", "synthetic", "--train-subset", "384", "--test-subset", "128", "--epochs", "1",
              "--quantization", "none", "--no-fp16", "--name", "tiny"]
    first = run_cli(tmp_path, *common)
    assert first.exit_code == 0, first.output
    records = stages(tmp_path, "tiny")
    assert [records[n]["status"] for n in ("train", "export-tensorrt", "bench", "report")] == ["done"] * 4
    assert records["quantize"]["status"] == "skipped" and "--quantization none" in records["quantize"]["reason"]
    assert (tmp_path / "runs" / "tiny" / "last.pt").is_file()
    assert (tmp_path / "exports" / "tiny" / "manifest.json").is_file()
    folder = tmp_path / "benchmarks" / "results" / "tiny"
    assert {"results.json", "report.md", "latency_vs_batch.png", "accuracy_vs_throughput.png", "pipeline.json"} <= {p.name for p in folder.iterdir()}
    results = json.loads((folder / "results.json").read_text())
    assert results["verification"]["passed"] is True
    rows = {row["name"]: row for row in results["rows"]}
    assert rows["onnxruntime-fp32"]["status"] == "ok" and rows["onnxruntime-fp32"]["accuracy"]["agreement"] == 100.0
    report = (folder / "report.md").read_text()
    assert "## Pipeline stages" in report and "| quantize | skipped | --quantization none" in report
    # Nothing that cannot run here is dropped silently: each is a skipped row or stage with its reason.
    skipped = {row["name"]: row["reason"] for row in results["rows"] if row["status"] == "skipped"}
    assert "tensorrt" in skipped or any(name.startswith("tensorrt") for name in skipped)
    train_checkpoint_hash = records["train"]["outputs"]

    second = run_cli(tmp_path, *common)
    assert second.exit_code == 0, second.output
    records = stages(tmp_path, "tiny")
    assert [records[n]["status"] for n in ("train", "export-tensorrt", "bench")] == ["current"] * 3
    assert records["train"]["outputs"] == train_checkpoint_hash

    changed = CliRunner().invoke(main, ["-q", "pipeline", "--workdir", str(tmp_path), *common, *FAST_BENCH[:-2], "--threads", "2"])
    assert changed.exit_code == 0, changed.output
    records = stages(tmp_path, "tiny")
    assert records["train"]["status"] == "current" and records["export-tensorrt"]["status"] == "current"
    assert records["bench"]["status"] == "done"


def test_state_detects_changed_outputs_and_force(tmp_path):
    from resnet_deploy.pipeline_state import PipelineState, StageRecord, hash_inputs

    output = tmp_path / "artifact.bin"
    output.write_bytes(b"one")
    state = PipelineState(tmp_path / "pipeline.json", force=False)
    inputs = hash_inputs({"a": 1})
    state.add(StageRecord("stage", "done", None, inputs, {str(output): __import__("resnet_deploy.fileio", fromlist=["x"]).sha256_file(output)}))
    again = PipelineState(tmp_path / "pipeline.json", force=False)
    assert again.is_current("stage", inputs)
    assert not again.is_current("stage", hash_inputs({"a": 2})), "changed inputs redo the stage"
    assert not PipelineState(tmp_path / "pipeline.json", force=True).is_current("stage", inputs), "--force redoes it"
    output.write_bytes(b"two")
    assert not again.is_current("stage", inputs), "an output changed since: redo"
    output.unlink()
    assert not again.is_current("stage", inputs), "an output deleted since: redo"


def test_failed_export_check_still_ends_in_a_report(tmp_path, synthetic_checkpoint, monkeypatch):
    """A stage whose check fails (after writing its evidence) is recorded as failed, the bench and the
    report still run, and the command exits 1 naming the stage."""
    import resnet_deploy.export as export_stage
    from resnet_deploy.errors import VerificationError

    real_export = export_stage.export_checkpoint

    def export_that_fails_its_check(options):
        real_export(options)
        raise VerificationError("1 export check(s) failed: int8 parity below threshold (injected)")

    monkeypatch.setattr(export_stage, "export_checkpoint", export_that_fails_its_check)
    result = run_cli(tmp_path, "--checkpoint", str(synthetic_checkpoint), "--dataset", "synthetic", "--test-subset", "128",
                     "--quantization", "none", "--no-fp16", "--name", "failing", "--backend", "pytorch,onnxruntime")
    assert result.exit_code == 1, result.output
    assert "export-tensorrt: 1 export check(s) failed" in result.output
    records = stages(tmp_path, "failing")
    assert records["train"]["status"] == "skipped" and "--checkpoint given" in records["train"]["reason"]
    assert records["export-tensorrt"]["status"] == "failed"
    assert records["bench"]["status"] == "done" and records["report"]["status"] == "done"
    report = (tmp_path / "benchmarks" / "results" / "failing" / "report.md").read_text()
    assert "| export-tensorrt | failed | 1 export check(s) failed" in report
    # A failed stage is never "current": the next run tries it again.
    from resnet_deploy.pipeline_state import PipelineState

    assert not PipelineState(tmp_path / "benchmarks" / "results" / "failing" / "pipeline.json", force=False).is_current(
        "export-tensorrt", records["export-tensorrt"]["inputs_hash"]
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--quantization", "fp4"], "--quantization"),
        (["--int8-targets", "gpu"], "--int8-targets accepts"),
        (["--checkpoint", "missing.pt"], "--checkpoint missing.pt not found"),
        (["--name", "a/b"], "--name must be a plain folder name"),
    ],
)
def test_pipeline_user_errors(tmp_path, arguments, message):
    base = ["--dataset", "synthetic", "--name", "x"]
    result = run_cli(tmp_path, *base, *arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_pipeline_refuses_a_name_export_would_refuse_before_training(tmp_path):
    """A name every other stage takes but export does not ("r20 b1": a space) is refused up front,
    naming --name, before training starts and before any folder is made."""
    from resnet_deploy.run_names import check_run_name

    name = "r20 b1"
    assert check_run_name(name) == name  # the runs/, calibration/ and bench rule takes it
    result = run_cli(tmp_path, "--train", "--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1",
                     "--quantization", "none", "--no-fp16", "--name", name)
    assert result.exit_code == 2, result.output
    assert f"--name {name!r} must be letters, digits" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pipeline_int8_path_reaches_the_bench(tmp_path, synthetic_checkpoint):
    """PTQ for the CPU scheme -> its int8 ONNX export -> an ONNX Runtime U8S8 row measured against FP32."""
    result = run_cli(tmp_path, "--checkpoint", str(synthetic_checkpoint), "--dataset", "synthetic", "--test-subset", "128",
                     "--quantization", "ptq", "--int8-targets", "cpu", "--calib-size", "64", "--no-fp16", "--no-verify",
                     "--name", "int8", "--backend", "onnxruntime")
    records = stages(tmp_path, "int8")
    assert records["quantize-ptq-cpu"]["status"] == "done"
    assert (tmp_path / "calibration" / "int8-ptq-cpu" / "manifest.json").is_file()
    # The cpu-scheme int8 ONNX must pass the export's own parity gate (ONNX Runtime's int8 kernels
    # against the exact Q/DQ reference, >= 99.5 % top-1 agreement on the 128 held-out images): a
    # failure here is a parity regression, not something this test may accept.
    assert records["export-cpu"]["status"] == "done", records["export-cpu"]
    assert not [name for name, record in records.items() if record["status"] == "failed"], records
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "benchmarks" / "results" / "int8" / "results.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    u8 = rows["onnxruntime-int8-u8s8"]
    assert u8["status"] == "ok" and u8["settings"]["quantization"]["activations"] == "uint8"
    assert 0 < u8["accuracy"]["count"] == 128 and u8["latency"][0]["status"] == "ok"


def test_interrupted_qat_stage_resumes_with_the_same_settings(tmp_path, synthetic_checkpoint, monkeypatch):
    """A QAT stage stopped by a signal is resumed by the next pipeline run with the same settings
    (its saved state continues), and started over with --force. Only the stage body is replaced:
    what is tested is the pipeline's decision."""
    import resnet_deploy.quantize as quantize_stage
    from resnet_deploy.errors import UserError
    from resnet_deploy.signals import Interrupted

    calls = []

    def qat_that_stops(*args, resume=False, **kwargs):
        calls.append(resume)
        if len(calls) == 1:
            raise Interrupted(15, "interrupted by signal 15; progress saved to qat_state.pt")
        raise UserError("stopped here by the test")

    monkeypatch.setattr(quantize_stage, "quantize_qat", qat_that_stops)
    args = ["--checkpoint", str(synthetic_checkpoint), "--dataset", "synthetic", "--test-subset", "64", "--quantization", "qat",
            "--int8-targets", "cpu", "--no-fp16", "--name", "qat", "--backend", "pytorch"]
    assert run_cli(tmp_path, *args).exit_code == 143
    assert run_cli(tmp_path, *args).exit_code == 2
    assert run_cli(tmp_path, *args, "--force").exit_code == 2
    assert calls == [False, True, False]


def test_qat_stage_gets_the_calibration_settings(tmp_path, monkeypatch):
    """QAT starts from calibrated observers: --calib-size and --calib-method (inputs of the quantize
    stage's hash) reach quantize_qat as they reach quantize_ptq. Only the stage bodies are replaced."""
    import resnet_deploy.quantize as quantize_stage
    from resnet_deploy.pipeline import PipelineConfig, _quantize

    calls = {}

    def recorder(kind):
        def record(loaded, dataset, directory, **kwargs):
            calls[kind] = kwargs
        return record

    monkeypatch.setattr(quantize_stage, "quantize_ptq", recorder("ptq"))
    monkeypatch.setattr(quantize_stage, "quantize_qat", recorder("qat"))
    config = PipelineConfig(name="calib", calib_size=123, calib_method="minmax", qat_epochs=1, qat_lr=0.01)
    for kind in ("ptq", "qat"):
        _quantize(config, object(), object(), kind, "cpu", tmp_path / kind, resume=False)
    assert calls["ptq"] == {"target": "cpu", "calib_size": 123, "method": "minmax"}
    assert calls["qat"] == {"target": "cpu", "epochs": 1, "lr": 0.01, "resume": False, "calib_size": 123, "method": "minmax"}
    _quantize(PipelineConfig(name="default", calib_size=7), object(), object(), "qat", "tensorrt", tmp_path / "d", resume=True)
    assert calls["qat"]["calib_size"] == 7 and "method" not in calls["qat"], "no --calib-method: quantize's own default"


def test_int8_targets_are_the_quantize_targets_cpu_first():
    """One definition of the targets (quantize_choices.TARGETS); the pipeline runs cpu first, as always."""
    from resnet_deploy.pipeline import INT8_TARGETS
    from resnet_deploy.quantize_choices import TARGETS

    assert sorted(INT8_TARGETS) == sorted(TARGETS) and len(INT8_TARGETS) == len(TARGETS)
    assert INT8_TARGETS == ("cpu", "tensorrt")
    option = next(p for p in main.commands["pipeline"].params if p.name == "int8_targets")
    assert option.default == ",".join(INT8_TARGETS)
