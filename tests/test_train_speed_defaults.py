"""Speed defaults of training: precision, channels_last and compile "auto", decided once per run,
recorded as decided (so resumption and the recipe are exact), and old checkpoints still resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from resnet_deploy import train_speed
from resnet_deploy.checkpoint import read_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.errors import UserError
from resnet_deploy.train import COMPILE_MIN_STEPS, PRECISIONS, TrainConfig, train
from resnet_deploy.train_speed import resolve_speed_settings

CPU = torch.device("cpu")


def _tiny(**overrides) -> TrainConfig:
    values = dict(model="resnet8", epochs=1, batch_size=64, lr=0.05, device="cpu", eval_batch_size=256)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture
def no_compiler_probe(monkeypatch):
    """Fails the test if the compiler is probed: short runs must decide without it."""

    def probe(device):
        raise AssertionError("compile_unavailable_reason called for a short run")

    monkeypatch.setattr(train_speed, "compile_unavailable_reason", probe)


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, no_compiler_probe, native, expected):
    monkeypatch.setattr(train_speed, "cpu_has_native_bf16", lambda: native)
    speed = resolve_speed_settings(TrainConfig(), CPU, total_steps=10)
    assert speed.precision == expected and speed.reasons["precision"].startswith("auto")
    assert speed.compile is False and "too few" in speed.reasons["compile"]


def test_native_bf16_probe_agrees_with_the_kernel_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "flags" not in cpuinfo.read_text():
        pytest.skip("no x86 /proc/cpuinfo to compare with")
    flags = cpuinfo.read_text().split()
    expected = torch.backends.mkldnn.is_available() and ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert train_speed.cpu_has_native_bf16() == expected


@pytest.mark.parametrize(("unavailable", "expected"), [(None, True), ("no C++ compiler for Inductor", False)])
def test_auto_compile_for_long_runs_where_a_compiler_works(monkeypatch, unavailable, expected):
    monkeypatch.setattr(train_speed, "compile_unavailable_reason", lambda device: unavailable)
    speed = resolve_speed_settings(TrainConfig(), CPU, total_steps=COMPILE_MIN_STEPS)
    assert speed.compile is expected
    assert (unavailable or "repay") in speed.reasons["compile"]


def test_explicit_compile_without_a_compiler_is_a_user_error(monkeypatch):
    monkeypatch.setattr(train_speed, "compile_unavailable_reason", lambda device: "no C++ compiler for Inductor")
    with pytest.raises(UserError, match="--compile cannot work here") as info:
        resolve_speed_settings(TrainConfig(compile=True), CPU, total_steps=10)
    assert "--no-compile" in info.value.hint


def test_explicit_settings_are_kept_as_given(monkeypatch, no_compiler_probe):
    """What an old checkpoint's config holds (precision fp32/bf16, booleans) passes through unchanged."""
    monkeypatch.setattr(train_speed, "cpu_has_native_bf16", lambda: True)
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        config = TrainConfig.from_dict({**TrainConfig().to_dict(), "precision": precision, "channels_last": channels_last, "compile": False})
        config.validate()
        speed = resolve_speed_settings(config, CPU, total_steps=10 * COMPILE_MIN_STEPS)
        assert (speed.precision, speed.channels_last, speed.compile) == (precision, channels_last, False)
        assert speed.apply(config).to_dict() == config.to_dict()


def test_bad_speed_values_are_refused():
    with pytest.raises(UserError, match="--precision must be one of auto, fp32"):
        TrainConfig(precision="int8").validate()
    with pytest.raises(UserError, match="--compile must be on, off or auto"):
        TrainConfig(compile="yes").validate()


def test_checkpoint_and_config_record_the_decided_settings(tmp_path, synthetic):
    train(_tiny(), synthetic.subset(256, 64), tmp_path)
    recorded = read_checkpoint(tmp_path / "last.pt")["train_config"]
    assert recorded["precision"] in PRECISIONS
    assert isinstance(recorded["channels_last"], bool) and recorded["compile"] is False  # 4 steps: no compile
    assert json.loads((tmp_path / "config.json").read_text())["train"] == recorded


def test_resume_keeps_the_settings_of_the_first_launch(tmp_path, synthetic, monkeypatch):
    """A run started in fp32/NCHW (also every checkpoint from before "auto") continues so, even where
    auto would now pick bf16 and channels_last."""
    dataset = synthetic.subset(256, 64)
    train(_tiny(precision="fp32", channels_last=False, compile=False), dataset, tmp_path)
    monkeypatch.setattr(train_speed, "cpu_has_native_bf16", lambda: True)
    train(_tiny(epochs=2), dataset, tmp_path, resume=True)
    saved = read_checkpoint(tmp_path / "last.pt")
    assert saved["epoch"] == 2
    assert (saved["train_config"]["precision"], saved["train_config"]["channels_last"]) == ("fp32", False)


def test_cli_speed_flags_are_tri_state(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(main, ["train", "--help"]).output
    assert "--no-compile" in help_text and "--no-channels-last" in help_text and "auto" in help_text
    assert "are for GPUs" not in help_text
    common = ["-q", "train", "--dataset", "synthetic", "--model", "resnet8", "--epochs", "1", "--device", "cpu"]
    result = runner.invoke(main, [*common, "--precision", "fp32", "--no-channels-last", "--no-compile", "-o", str(tmp_path / "off")])
    assert result.exit_code == 0, result.output
    recorded = read_checkpoint(tmp_path / "off" / "last.pt")["train_config"]
    assert (recorded["precision"], recorded["channels_last"], recorded["compile"]) == ("fp32", False, False)
    result = runner.invoke(main, [*common, "--channels-last", "-o", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    recorded = read_checkpoint(tmp_path / "auto" / "last.pt")["train_config"]
    assert recorded["precision"] in PRECISIONS and recorded["channels_last"] is True and recorded["compile"] is False
