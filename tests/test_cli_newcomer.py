"""The CLI as a newcomer meets it (issue #16): fast `models`, -q/-v anywhere, options that would be
ignored or contradict each other refused (exit 2, naming the option as typed), `pipeline` checking every
option before its first stage, no empty folder left by a refused command, help text on every option,
examples that parse, and $RESNET_DEPLOY_DATA as the default --data-dir.

Every test here stops before heavy work (refusals, a meta-device `models`, parsing the examples), so the
file runs in seconds on top of the torch import.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_deploy import progress
from resnet_deploy.cli import main
from resnet_deploy.errors import UserError


@pytest.fixture(autouse=True)
def newcomer(tmp_path, monkeypatch):
    """A fresh folder as the working directory, no RESNET_DEPLOY_DATA, and the global progress and
    logging state put back afterwards (-q/-v change them for the process)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RESNET_DEPLOY_DATA", raising=False)
    monkeypatch.setenv("RESNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(progress, "_enabled", progress.enabled())
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield tmp_path
    root.setLevel(level)
    root.handlers[:] = handlers


def invoke(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained ResNet8 for the synthetic classes: a valid checkpoint made in milliseconds."""
    from resnet_deploy.checkpoint import save_checkpoint
    from resnet_deploy.data import synthetic_dataset
    from resnet_deploy.models import create_model, normalize_spec

    dataset = synthetic_dataset()
    path = tmp_path_factory.mktemp("tiny") / "tiny" / "best.pt"
    save_checkpoint(path, {"model": normalize_spec("resnet8", 10).to_dict(), "state_dict": create_model("resnet8", 10).state_dict(),
                           "normalization": dataset.normalization.to_dict(), "dataset": {"name": dataset.name, "classes": dataset.classes}})
    return path


@pytest.fixture
def pipeline_stops_at_start(monkeypatch):
    """``run_pipeline`` replaced by one that loads the data (as the real one does before training) and
    stops: what the CLI checked before handing over is all that runs. Returns the configs it got."""
    from resnet_deploy import pipeline as pipeline_module

    seen = []

    def stop(config, load_data):
        seen.append(config)
        load_data()
        raise UserError("reached the pipeline")

    monkeypatch.setattr(pipeline_module, "run_pipeline", stop)
    return seen


SYNTHETIC = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32"]


# ------------------------------------------------------------------------------------ 1. models is fast


def test_shell_counts_equal_the_real_models():
    from resnet_deploy.models import ModelSpec, build_model, build_model_shell, count_flops, count_parameters, parse_model_name

    for name in ("resnet20", "plain56", "resnet50"):
        key, plain = parse_model_name(name)
        spec = ModelSpec(key, 10, plain)
        shell, real = build_model_shell(spec), build_model(spec)
        assert all(p.device.type == "meta" for p in shell.parameters())
        assert count_parameters(shell) == sum(p.numel() for p in real.parameters()), name
        if name != "resnet50":  # a real ResNet50 forward pass is seconds of CPU; the shapes are what count
            assert count_flops(shell) == count_flops(real), name


def test_models_builds_no_real_weights(monkeypatch):
    from resnet_deploy import models as models_module
    from resnet_deploy.models import create_model

    expected = {name: sum(p.numel() for p in create_model(name).parameters()) for name in ("resnet20", "plain56")}
    original = models_module.CifarResNet.__init__
    devices = []

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append({p.device.type for p in self.parameters()})

    monkeypatch.setattr(models_module.CifarResNet, "__init__", recording_init)
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    assert len(devices) >= 20 and all(found == {"meta"} for found in devices), devices
    import json

    rows = {row["model"]: row for row in json.loads(result.stdout)}
    assert {name: rows[name]["params"] for name in expected} == expected


# ------------------------------------------------------------------------------ 2. -q / -v anywhere


def test_quiet_and_verbose_work_after_the_command():
    result = invoke("data", *SYNTHETIC, "-q")
    assert result.exit_code == 0, result.output
    assert not progress.enabled()
    result = invoke("data", *SYNTHETIC, "--verbose")
    assert result.exit_code == 0, result.output
    assert progress.enabled()
    result = invoke("-q", "data", *SYNTHETIC)  # before the command, as always
    assert result.exit_code == 0 and not progress.enabled(), result.output
    result = invoke("-q", "data", *SYNTHETIC, "-v")
    assert result.exit_code == 2 and "contradict" in result.output, result.output


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_takes_quiet_and_verbose(command):
    for flag in ("-q", "-v"):
        result = invoke(command, flag, "--help")
        assert result.exit_code == 0, result.output
        assert "--quiet" in result.output and "--verbose" in result.output


# ------------------------------------------------------------------- 3. bench with nothing to measure


def test_bench_refuses_no_accuracy_and_no_latency(tiny_checkpoint, newcomer):
    result = invoke("bench", "--checkpoint", tiny_checkpoint, *SYNTHETIC, "--backend", "pytorch", "--no-accuracy", "--no-latency",
                    "--output-root", "out")
    assert result.exit_code == 2, result.output
    assert "--no-accuracy and --no-latency" in result.output and "nothing to measure" in result.output
    assert not (newcomer / "out").exists()


def test_pipeline_refuses_no_accuracy_and_no_latency(pipeline_stops_at_start):
    result = invoke("pipeline", "--name", "p", *SYNTHETIC, "--no-accuracy", "--no-latency", "--no-verify")
    assert result.exit_code == 2 and "nothing to measure" in result.output, result.output
    assert not pipeline_stops_at_start


# ------------------------------------------------------------ 4. quantize options of the other mode


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--epochs", "2"], "--epochs"),
        (["--lr", "0.01"], "--lr"),
        (["--batch-size", "64"], "--batch-size"),
        (["--freeze-observers-epoch", "1"], "--freeze-observers-epoch"),
        (["--freeze-bn-epoch", "0"], "--freeze-bn-epoch"),
        (["--device", "cpu"], "--device"),
        (["--qat", "--no-bias-correction"], "--no-bias-correction"),
        (["--sensitivity-images", "500"], "--sensitivity-images"),
        (["--max-float-layers", "1"], "--max-float-layers"),
        (["--method", "minmax", "--percentile", "99.9"], "--percentile"),
    ],
)
def test_quantize_refuses_options_of_another_mode(arguments, named, newcomer):
    result = invoke("quantize", "pretrained:resnet20", *SYNTHETIC, *arguments)
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()
    assert error[0].startswith("error:") and named in error[0], result.output
    assert not (newcomer / "calibration").exists()


@pytest.mark.parametrize(
    "device, says",
    [("cuda", "no CUDA GPU is available"), ("cuda:1", "no CUDA GPU is available"), ("meta", "is not supported"), ("gpu0", "is not a device")],
)
def test_quantize_qat_refuses_a_device_it_cannot_run_on(device, says, newcomer, monkeypatch):
    """--qat --device: train's device parser, asked before the checkpoint or the data are loaded
    (torch.cuda.is_available patched, so a GPU machine sees what a CPU-only one does)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("quantize", "pretrained:resnet20", *SYNTHETIC, "--qat", "--device", device, "-o", "q")
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()
    assert error[0].startswith("error: --device") and says in error[0], result.output
    assert all(line.strip().startswith("hint:") for line in error[1:]), result.output  # one line, and its hint at most
    assert "Traceback" not in result.output and not (newcomer / "q").exists()


# -------------------------------------------------------------------------- 5. pipeline --verify


@pytest.mark.parametrize(
    "arguments, verifies",
    [([], True), (["--verify"], True), (["--no-verify"], False), (["--verify", "--no-verify"], False), (["--no-verify", "--verify"], True)],
)
def test_pipeline_verify_flags(arguments, verifies, pipeline_stops_at_start):
    result = invoke("pipeline", "--name", "p", *SYNTHETIC, "--quantization", "none", *arguments)
    assert result.exit_code == 2 and "reached the pipeline" in result.output, result.output
    assert (pipeline_stops_at_start[0].thresholds is not None) == verifies


def test_pipeline_verify_is_documented():
    result = invoke("pipeline", "--help")
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    assert "--verify / --no-verify" in help_text and "the last one given wins" in help_text


# --------------------------------------------------------- 6. pipeline checks every option up front


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--calib-method", "bogus"], "--calib-method"),
        (["--train", "--train-device", "gpu0"], "--train-device"),
        (["--train", "--lr", "nan"], "--lr"),
        (["--train", "--model", "resnet7"], "--model"),
        (["--train", "--seed", "-1"], "--seed"),
        (["--quantization", "qat", "--qat-lr", "-1"], "--qat-lr"),
        (["--qat-epochs", "3"], "--qat-epochs"),
        (["--quantization", "qat", "--calib-size", "64"], "--calib-size"),
        (["--quantization", "none", "--calib-method", "minmax"], "--calib-method"),
        (["--train-device", "cpu"], "--train-device"),
        (["--compute-capability", "x"], "--compute-capability"),
        (["--train", "--train-batch-size", "512"], "--train-batch-size"),
        (["--calib-size", "5000"], "--calib-size"),
    ],
)
def test_pipeline_checks_options_before_any_stage(arguments, named, pipeline_stops_at_start, newcomer):
    result = invoke("pipeline", "--name", "p", "--workdir", "work", *SYNTHETIC, *arguments)
    assert result.exit_code == 2, result.output
    assert "reached the pipeline" not in result.output, f"{arguments} got past the CLI's checks"
    assert named in result.output, result.output
    if named == "--train-batch-size":
        assert "--batch-size " not in result.output.replace("--train-batch-size", "")
    assert not (newcomer / "work").exists()


def test_pipeline_refuses_model_with_checkpoint(tiny_checkpoint, pipeline_stops_at_start):
    result = invoke("pipeline", "--name", "p", *SYNTHETIC, "--checkpoint", tiny_checkpoint, "--model", "resnet56")
    assert result.exit_code == 2 and "--model" in result.output and "reached the pipeline" not in result.output, result.output


# --------------------------------------------------------------- 7. no empty folders after a refusal


def test_refused_train_leaves_no_output_folder(newcomer):
    result = invoke("train", "--dataset", "imagefolder", "--data-dir", "no/such/folder", "--epochs", "1", "-o", "out/run")
    assert result.exit_code == 2, result.output
    assert not (newcomer / "out").exists()


def test_refused_quantize_leaves_no_output_folder(tiny_checkpoint, newcomer):
    result = invoke("quantize", tiny_checkpoint, *SYNTHETIC, "--calib-size", "16", "--keep-float", "no.such.layer", "-o", "out/q")
    assert result.exit_code == 2, result.output
    assert not (newcomer / "out").exists()


def test_refused_export_leaves_no_output_folder(tiny_checkpoint, newcomer):
    result = invoke("export", tiny_checkpoint, "--int8", "no-such-artifact", "--no-tensorrt", "--output-dir", "out/exports")
    assert result.exit_code == 2, result.output
    assert not (newcomer / "out").exists()


def test_refused_bench_leaves_no_output_folder(newcomer):
    result = invoke("bench", "--export", "no-such-export", *SYNTHETIC, "--backend", "pytorch", "--no-latency", "--output-root", "out/bench")
    assert result.exit_code == 2, result.output
    assert not (newcomer / "out").exists()


def test_refused_pipeline_leaves_no_output_folder(tiny_checkpoint, newcomer):
    result = invoke("pipeline", "--name", "p", "--workdir", "out/w")  # cifar10 without a data location
    assert result.exit_code == 2, result.output
    assert not (newcomer / "out").exists()
    result = invoke("pipeline", "--name", "p", "--workdir", "out/w", "--checkpoint", tiny_checkpoint, *SYNTHETIC, "--calib-size", "5000",
                    "--no-tensorrt", "--backend", "pytorch")
    assert result.exit_code == 2 and "--calib-size" in result.output, result.output
    assert not (newcomer / "out").exists()


def test_a_folder_that_was_there_is_kept(newcomer):
    (newcomer / "out").mkdir()
    (newcomer / "out" / "keep.txt").write_text("x")
    result = invoke("train", "--dataset", "imagefolder", "--data-dir", "no/such/folder", "--epochs", "1", "-o", "out/run")
    assert result.exit_code == 2, result.output
    assert (newcomer / "out" / "keep.txt").is_file() and not (newcomer / "out" / "run").exists()


# ------------------------------------------------------------------------- 8. help and examples


def test_every_option_has_help_text():
    import click

    missing = [f"{name} {param.opts[0]}" for name, command in main.commands.items() for param in command.params
               if isinstance(param, click.Option) and not (param.help or "").strip()]
    missing += [f"resnet-deploy {param.opts[0]}" for param in main.params if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not missing, missing


def _examples(command) -> list[list[str]]:
    """The example command lines of a command's help, as argument lists (env assignments kept in front)."""
    lines, inside = [], False
    for line in (command.help or "").splitlines():
        stripped = line.strip()
        if stripped in ("Examples:", "Example:"):
            inside = True
            continue
        if inside and not stripped.startswith(("resnet-deploy ", "RESNET_DEPLOY_")) and stripped != "resnet-deploy":
            inside = False
        if inside:
            text = re.split(r"\s{2,}(?:#|\()", stripped)[0]  # drop a trailing remark: "   (the shipped ResNet20)", "  # ..."
            lines.append(shlex.split(text))
    return lines


@pytest.mark.parametrize("name", ["data", "eval", "models"])
def test_data_eval_models_have_examples(name):
    assert _examples(main.commands[name]), f"{name} --help has no examples"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_example_parses(name):
    """Every example of every --help names options that exist, with values of the right type."""
    examples = _examples(main.commands[name])
    for argv in examples:
        while "=" in argv[0]:
            argv = argv[1:]
        assert argv[0] == "resnet-deploy" and argv[1] in main.commands, argv  # a follow-up command may be shown too
        parent = main.make_context("resnet-deploy", [argv[1]], resilient_parsing=True)
        with main.commands[argv[1]].make_context(argv[1], argv[2:], parent=parent):
            pass


def test_data_and_models_examples_run():
    """The examples of `data` and `models` run as written (those on the shared CIFAR-10 copy are only
    parsed above: decoding it takes minutes on this machine, and test_data.py covers that path)."""
    ran = 0
    for name in ("data", "models"):
        for argv in _examples(main.commands[name]):
            env = {}
            while "=" in argv[0]:
                key, _, value = argv[0].partition("=")
                env[key], argv = value, argv[1:]
            if any("../shared/" in part for part in [*argv, *env.values()]):
                continue
            result = CliRunner().invoke(main, argv[1:], env=env)
            assert result.exit_code == 0, (argv, result.output)
            ran += 1
    assert ran >= 4


# --------------------------------------------------------------------- 9. RESNET_DEPLOY_DATA


def test_data_dir_defaults_to_the_environment(monkeypatch):
    from resnet_deploy.cli import options
    from resnet_deploy.data import synthetic_dataset

    seen = []

    def fake_load(name, data_dir, **kwargs):
        seen.append(data_dir)
        return synthetic_dataset(train_size=16, test_size=16)

    monkeypatch.setattr(options, "load_dataset", fake_load)
    assert CliRunner().invoke(main, ["data"], env={"RESNET_DEPLOY_DATA": "from/env"}).exit_code == 0
    assert CliRunner().invoke(main, ["data", "--data-dir", "given"], env={"RESNET_DEPLOY_DATA": "from/env"}).exit_code == 0
    assert seen == ["from/env", "given"]
    assert "RESNET_DEPLOY_DATA" in invoke("data", "--help").output


def test_missing_data_location_names_the_environment_variable(newcomer):
    result = invoke("data")
    assert result.exit_code == 2
    assert "--data-dir" in result.output and "RESNET_DEPLOY_DATA" in result.output, result.output
    result = invoke("train", "--epochs", "1", "-o", "out/run")
    assert result.exit_code == 2 and "RESNET_DEPLOY_DATA" in result.output, result.output
    assert not (newcomer / "out").exists()
