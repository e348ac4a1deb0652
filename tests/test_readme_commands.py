"""Every `resnet-deploy ...` command line of README.md parses against the real click commands, and runs
as written, in README order, with small synthetic settings (issue #16).

The command lines are those of README's code blocks, and its inline examples that are whole commands
(an option given, no placeholder such as CKPT or `...`). The run replaces the data (DATA and the shared
CIFAR-10 path: a 200 + 40 image CIFAR-10 folder in the official format, random pixels) and SOURCE (an
akamaster checkpoint of tests/test_import.py) and adds shrinking options per command (SHRINK) to what
README wrote; every other option and path is README's own, so one line that reads another's output
(quantize's calibration/r20-tensorrt, export's exports/r20) fails if README names it wrongly. Commands
too heavy even shrunk are in HEAVY with the reason; a README command that is neither run nor listed
fails the test.
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

README = Path(__file__).resolve().parents[1] / "README.md"

HEAVY = {
    "resnet-deploy pipeline --data-dir ../shared/datasets/cifar10-jpeg.tar.xz --name r20":
        "every stage and the full bench sweep; each stage's own README line runs here, and tests/test_pipeline.py runs the pipeline on synthetic data",
    "resnet-deploy pipeline --train --model resnet20 --epochs 15 --data-dir DATA --name r20-scratch":
        "the pipeline with training first: as above, and the train line runs here",
    "resnet-deploy pipeline --name r20":
        "the main command again, its data from $RESNET_DEPLOY_DATA (tests/test_cli_newcomer.py checks that default)",
    "resnet-deploy import SOURCE --from auto --model resnet18 -o runs/kuangliu-r18/best.pt":
        "an 11M-weight ResNet18 source; tests/test_import.py imports kuangliu's ResNet18 with --from auto",
    "resnet-deploy import SOURCE --from torchvision --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 -o runs/tv-r50/best.pt":
        "a 23M-weight ResNet50 source; tests/test_import.py imports a torchvision-style ResNet18 with --mean/--std",
    "resnet-deploy train --model resnet110 --schedule multistep --epochs 164 --warmup-epochs 1 --data-dir DATA":
        "ResNet110 is 5.5x the resnet20 line's layers on the same code path, and --warmup-epochs 1 needs 2 epochs",
    "resnet-deploy train --model resnet56 --device cuda --precision bf16 --channels-last --compile --batch-size 512 --lr 0.4 --data-dir DATA":
        "needs a CUDA device (and torch.compile)",
    "resnet-deploy quantize runs/r20/best.pt --sensitivity --data-dir DATA":
        "one PTQ per layer (about 20) on at least 100 test images (--sensitivity-images' minimum)",
    "resnet-deploy export runs/r20/best.pt --int8 calibration/r20-tensorrt --compute-capability 8.6 --data-dir DATA":
        "builds TensorRT-RTX engines (tests/test_tensorrt.py builds them where the bindings work)",
    "resnet-deploy bench --export exports/r50 --backend tensorrt --device cuda --cuda-graph --data-dir DATA":
        "needs a CUDA GPU and TensorRT engines of a ResNet50",
}

# The inspect walk-through starts from the shipped model, not from the runs/r20 of the sections above.
FRESH_FOLDER_FROM = "resnet-deploy quantize pretrained:resnet20 --data-dir DATA -o calibration/r20-tensorrt"

# Appended to README's line (the last value of an option wins): small enough to run in seconds.
SHRINK = {
    "train": ["--epochs", "1"],
    "quantize": ["--calib-size", "64"],
    "export": ["--no-tensorrt"],  # TensorRT-RTX is installed here; its engine builds are HEAVY's export line
    "bench": ["--batch-sizes", "1", "--warmup", "0", "--min-iterations", "2", "--min-time", "0", "--max-time", "0.1"],
    "inspect": ["--images", "16"],
}
# A one-epoch model on 40 noise images: one flipped image is 2.5 points, so the int8 gate is opened;
# that the command runs and verifies is what is checked here (tests/test_bench.py tests the gate).
VERIFY_SHRINK = ["--max-int8-drop", "100"]

_PLACEHOLDER = re.compile(r"\.\.\.|\[|\b(?!DATA\b|SOURCE\b)[A-Z]{3,}\b")


def readme_commands(text: str) -> list[str]:
    """The command lines, in README order: code-block lines (the part after `&&` when a setup step
    comes first, a trailing `# remark` dropped) and inline `resnet-deploy ...` examples."""
    found, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            for part in line.split("&&"):
                part = part.split("  #")[0].strip()
                if re.match(r"^(\.venv/bin/)?resnet-deploy\s", part):
                    found.append(part.removeprefix(".venv/bin/"))
        else:
            found += [span for span in re.findall(r"`(resnet-deploy [^`]+)`", line) if re.search(r"\s-", span) and not _PLACEHOLDER.search(span)]
    return [" ".join(command.split()) for command in found]


COMMANDS = readme_commands(README.read_text())


def test_readme_commands_are_found():
    assert len(COMMANDS) >= 25, COMMANDS
    assert FRESH_FOLDER_FROM in COMMANDS
    stale = sorted(set(HEAVY) - set(COMMANDS))
    assert not stale, f"HEAVY names commands README no longer has: {stale}"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    """Every option exists and every value converts (choices, numbers, callbacks), without running."""
    argv = shlex.split(command)
    assert argv[1] in main.commands, command
    parent = main.make_context("resnet-deploy", [argv[1]], resilient_parsing=True)
    with main.commands[argv[1]].make_context(argv[1], argv[2:], parent=parent):
        pass


@pytest.fixture
def quiet_state(monkeypatch):
    """-q/-v in a README line change the process's progress and logging state: put them back."""
    monkeypatch.setattr(progress, "_enabled", progress.enabled())
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def _tiny_inputs(root: Path) -> dict[str, str]:
    from test_data import write_cifar10
    from test_import import AkamasterResNet, randomise, save_akamaster

    write_cifar10(root / "cifar10", per_batch=40)
    (root / "akamaster").mkdir()
    source = save_akamaster(randomise(AkamasterResNet(3), seed=0), root / "akamaster")
    return {"DATA": str(root / "cifar10"), "SOURCE": str(source)}


def runnable_argv(command: str, inputs: dict[str, str]) -> list[str]:
    argv = shlex.split(command)[1:]
    argv = [inputs["DATA"] if part == "DATA" or "../shared/" in part else inputs.get(part, part) for part in argv]
    extra = list(SHRINK.get(argv[0], []))
    if argv[0] == "inspect" and "--lint" in argv:
        extra = []
    if "--verify" in argv:
        extra += VERIFY_SHRINK
    return argv + extra


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, quiet_state):
    """README top to bottom, in one working folder (a fresh one for the inspect walk-through)."""
    inputs = _tiny_inputs(tmp_path / "inputs")
    monkeypatch.delenv("RESNET_DEPLOY_DATA", raising=False)
    monkeypatch.setenv("RESNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "readme"
    folder.mkdir()
    monkeypatch.chdir(folder)
    ran = []
    for command in COMMANDS:
        if command in HEAVY:
            continue
        if command == FRESH_FOLDER_FROM:
            folder = tmp_path / "walk-through"
            folder.mkdir()
            monkeypatch.chdir(folder)
        argv = runnable_argv(command, inputs)
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, f"README's `{command}` (run as {argv}) exited {result.exit_code}:\n{result.output}"
        ran.append(command)
    assert set(ran) | set(HEAVY) == set(COMMANDS)
    assert len(ran) >= 15, ran
