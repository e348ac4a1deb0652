"""Training: real learning on the shared CIFAR-10, exact resume, schedules, checkpoints, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.checkpoint import load_checkpoint, read_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.errors import UserError
from resnet_deploy.train import TrainConfig, lr_factor, train


def test_short_real_training_beats_chance(trained_resnet20, cifar10_small):
    """3 epochs on 6,000 shared CIFAR-10 images: far above the 10% of chance on unseen test images."""
    raw = read_checkpoint(trained_resnet20)
    history = raw["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["test_top1"] > 35.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    loaded = load_checkpoint(trained_resnet20)
    assert loaded.classes == cifar10_small.classes
    assert loaded.normalization == cifar10_small.normalization


def test_checkpoint_is_weights_only_loadable(trained_resnet20):
    raw = torch.load(trained_resnet20, weights_only=True)
    assert raw["format"] == "resnet-deploy/checkpoint" and raw["epoch"] == 3 and raw["step"] == 0
    for key in ("optimizer", "scheduler", "train_config", "normalization", "dataset", "best_accuracy"):
        assert key in raw


def _config(**overrides) -> TrainConfig:
    values = dict(model="resnet8", epochs=3, batch_size=64, lr=0.05, device="cpu", eval_batch_size=256)
    values.update(overrides)
    return TrainConfig(**values)


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [(1, 0), (1, 17)])
def test_kill_and_resume_gives_identical_weights(tmp_path, synthetic, crash_at):
    """A run that dies (after the epoch-1 checkpoint, here at epoch 2) and resumes ends with exactly
    the weights, optimizer state and history of a run that never stopped."""
    dataset = synthetic.subset(1280, 256)
    straight = train(_config(), dataset, tmp_path / "straight")

    def crash(epoch, step):
        if (epoch, step) == crash_at:
            raise Crash

    with pytest.raises(Crash):
        train(_config(), dataset, tmp_path / "resumed", on_step=crash)
    assert read_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    resumed = train(_config(), dataset, tmp_path / "resumed", resume=True)
    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "resumed" / "last.pt")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["history"][-1]["test_top1"] == b["history"][-1]["test_top1"] == resumed["test_top1"] == straight["test_top1"]
    assert [row["epoch"] for row in b["history"]] == [1, 2, 3]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_interrupt_mid_epoch_saves_the_batch_reached(tmp_path, synthetic):
    """SIGINT/SIGTERM mid-epoch saves (epoch, step); resuming from there matches an uninterrupted run."""
    import os
    import signal

    from resnet_deploy.train import TrainingInterrupted

    dataset = synthetic.subset(1280, 256)
    config = _config(epochs=2)
    train(config, dataset, tmp_path / "straight")

    def interrupt(epoch, step):
        if (epoch, step) == (0, 9):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        train(config, dataset, tmp_path / "stopped", on_step=interrupt)
    assert info.value.exit_code == 128 + signal.SIGTERM
    saved = read_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (0, 10)
    train(config, dataset, tmp_path / "stopped", resume=True)
    a = read_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "stopped" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedules():
    config = TrainConfig(epochs=10, schedule="multistep")
    factor = lr_factor(config, 100)
    assert factor(0) == 1.0 and factor(499) == 1.0 and factor(500) == pytest.approx(0.1) and factor(750) == pytest.approx(0.01)
    cosine = lr_factor(TrainConfig(epochs=10, schedule="cosine"), 100)
    assert cosine(0) == 1.0 and cosine(500) == pytest.approx(0.5) and cosine(1000) == pytest.approx(0.0)
    onecycle = lr_factor(TrainConfig(epochs=10, schedule="onecycle"), 100)
    assert onecycle(0) == pytest.approx(0.1) and onecycle(250) == pytest.approx(1.0) and onecycle(1000) == 0.0
    warm = lr_factor(TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1), 100)
    assert warm(0) == pytest.approx(0.01) and warm(99) == pytest.approx(1.0)


def test_adamw_label_smoothing_and_divergence(tmp_path, synthetic):
    dataset = synthetic.subset(512, 128)
    result = train(_config(epochs=1, optimizer="adamw", lr=1e-3, label_smoothing=0.1), dataset, tmp_path / "adamw")
    assert result["epoch"] == 1
    with pytest.raises(UserError, match="training diverged"):
        train(_config(epochs=1, lr=1e12, momentum=0.0), dataset, tmp_path / "nan")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "no cifar10 data found"),
        (["train", "--dataset", "cifar10"], "needs --data-dir"),
        (["train", "--dataset", "synthetic", "--model", "resnet21"], "unknown model 'resnet21'"),
        (["train", "--dataset", "synthetic", "--epochs", "0"], "--epochs must be positive"),
        (["train", "--dataset", "synthetic", "--lr", "-1"], "--lr must be a positive number"),
        (["train", "--dataset", "synthetic", "--milestones", "0.5,x"], "--milestones"),
        (["eval", "/nonexistent.pt", "--dataset", "synthetic"], "checkpoint not found"),
    ],
)
def test_bad_inputs_exit_2_without_traceback(tmp_path, args, message):
    result = CliRunner().invoke(main, ["-q", *args, *(["-o", str(tmp_path / "out")] if args[0] == "train" else [])])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_eval_refuses_checkpoint_of_other_class_count(tmp_path, synthetic_checkpoint, monkeypatch):
    from resnet_deploy import data as data_module

    hundred = data_module.synthetic_dataset(num_classes=100, train_size=200, test_size=100)
    monkeypatch.setattr(data_module, "synthetic_dataset", lambda: hundred)
    result = CliRunner().invoke(main, ["-q", "eval", str(synthetic_checkpoint), "--dataset", "synthetic"])
    assert result.exit_code == 2 and "has 10 classes but dataset synthetic has 100" in result.output


def test_train_and_eval_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["-q", "train", "--dataset", "synthetic", "--model", "plain8", "--epochs", "1", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["epoch"] == 1
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.json"}
    assert read_checkpoint(out / "last.pt")["model"] == {"name": "resnet8", "num_classes": 10, "plain": True, "shortcut": "A"}
    evaluated = runner.invoke(main, ["-q", "eval", str(out / "last.pt"), "--dataset", "synthetic"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.output)
    assert metrics["count"] == 512 and 0 <= metrics["top1"] <= 100 and metrics["images_per_sec"] > 0
    assert "tta_flip_top1" not in metrics
    with_tta = runner.invoke(main, ["-q", "eval", str(out / "last.pt"), "--dataset", "synthetic", "--tta", "flip"])
    assert with_tta.exit_code == 0, with_tta.output
    flipped = json.loads(with_tta.output)
    assert flipped["top1"] == metrics["top1"] and 0 <= flipped["tta_flip_top1"] <= 100  # single crop unchanged


class _LeftHalfLinear(torch.nn.Module):
    """A linear classifier of the left half of the image only: far from mirror-symmetric."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 16, classes)

    def forward(self, x):
        return self.linear(x[..., :16].flatten(1))


def test_flip_tta_is_reported_beside_the_single_crop_figure(synthetic):
    from resnet_deploy.evaluation import evaluate, flip_averaged_log_probs, predict_logits

    torch.manual_seed(0)
    model, norm = _LeftHalfLinear(), synthetic.normalization
    images = synthetic.test_images[:256]
    logits = predict_logits(model, images, norm)
    labels = logits.argmax(1).numpy()  # single crop is right on every image by construction
    single = evaluate(model, images, labels, norm)
    flipped = evaluate(model, images, labels, norm, tta="flip")
    assert single["top1"] == flipped["top1"] == 100.0 and single["loss"] == flipped["loss"]
    assert "tta_flip_top1" not in single
    assert flipped["tta_flip_top1"] < 100.0  # the mirror sees the other half: predictions change
    mirrored = predict_logits(lambda x: model(x.flip(3)), images, norm)
    mean_probs = (logits.softmax(1) + mirrored.softmax(1)) / 2
    assert torch.allclose(flip_averaged_log_probs(logits, mirrored).exp(), mean_probs, atol=1e-6)


def test_flip_tta_of_a_mirror_symmetric_model_equals_single_crop(synthetic):
    from resnet_deploy.evaluation import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    metrics = evaluate(model, synthetic.test_images[:128], synthetic.test_labels[:128], synthetic.normalization, tta="flip")
    assert metrics["tta_flip_top1"] == metrics["top1"]
    assert metrics["tta_flip_loss"] == pytest.approx(metrics["loss"], abs=1e-6)
