"""The shipped zoo: every shipped model reproduces its registry figure, pretrained:NAME works wherever a
checkpoint is taken (verified by hash, offline), and scripts/ship_model.py ships what it measures.

Models shipped in the package are checked on the shared CIFAR-10 (skipped where it is absent). The
command-line behaviour is tested on a temporary zoo ($RESNET_DEPLOY_ZOO) holding a ResNet20 trained one
epoch on the synthetic set and shipped by the real script.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import shlex
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
from click.testing import CliRunner

from resnet_deploy import zoo
from resnet_deploy.checkpoint import DIGEST_KEY, load_checkpoint, read_checkpoint, save_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.cli.options import CheckpointType
from resnet_deploy.errors import UserError
from resnet_deploy.evaluation import evaluate
from resnet_deploy.fileio import sha256_file
from resnet_deploy.zoo.ship import SHIPPED_KEYS, correct_count, fixed_subset, ship_model
from test_pipeline import FAST_BENCH, stages

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ZOO = Path(zoo.__file__).resolve().parent
SHIPPED = zoo.list_pretrained(PACKAGE_ZOO)
TEST_NAME = "resnet20"  # the temporary zoo's model takes the name the pipeline's default looks for


def invoke(*arguments: str):
    return CliRunner().invoke(main, ["-q", *arguments])


def check_against_registry(entry: dict, directory: Path, dataset) -> None:
    """The model's FP32 top-1 on its fixed test subset, measured now, equals the registry's figure.

    Exact: FP32 on CPU with the recorded batch size is deterministic (no autocast, no sampling).
    """
    path = zoo.resolve(entry["name"], directory)  # the sha256 check
    subset = entry["top1_subset"]
    images, labels, definition = fixed_subset(dataset, subset["subset"]["size"])
    assert definition == subset["subset"], f"this data copy's test subset is not the one {entry['name']}'s figure was measured on"
    loaded = load_checkpoint(path)
    metrics = evaluate(loaded.model, images, labels, loaded.normalization, entry["eval"]["batch_size"])
    assert correct_count(metrics) == subset["correct"], f"{entry['name']}: {metrics['top1']:.2f}% now, {subset['top1']:.2f}% in the registry"


# ------------------------------------------------------------------------------------ the shipped models


def test_the_package_ships_resnet20():
    """pipeline starts from pretrained:resnet20 by default."""
    assert "resnet20" in {entry["name"] for entry in SHIPPED}


@pytest.mark.parametrize("entry", SHIPPED, ids=[entry["name"] for entry in SHIPPED])
def test_shipped_model_reproduces_its_registry_figure(entry, cifar10, monkeypatch):
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    check_against_registry(entry, PACKAGE_ZOO, cifar10)
    raw = read_checkpoint(PACKAGE_ZOO / entry["file"])
    assert set(raw) <= {*SHIPPED_KEYS, "format", "version", DIGEST_KEY}, "a shipped checkpoint holds no training state"
    assert entry["epochs"] == raw["epoch"] == raw["train_config"]["epochs"]


def test_eval_takes_the_shipped_resnet20(cifar10_archive, monkeypatch):
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    result = invoke("eval", "pretrained:resnet20", "--data-dir", str(cifar10_archive), "--test-subset", "200")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(zoo.resolve("resnet20", PACKAGE_ZOO))


def test_registry_and_shipped_files_are_package_data():
    """Installed with the package, also by a non-editable pip install."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [part.strip() for part in config["options.package_data"]["resnet_deploy.zoo"].split(",")]
    for file in [zoo.REGISTRY_FILE, *(entry["file"] for entry in SHIPPED)]:
        assert any(fnmatch(file, pattern) for pattern in patterns), f"{file} is not package data"


# ------------------------------------------------------------------------------------ a temporary zoo


@pytest.fixture(scope="module")
def tiny_zoo(synthetic_checkpoint, tmp_path_factory) -> Path:
    """A zoo shipped by scripts/ship_model.py from a one-epoch synthetic ResNet20: the script's own
    main(), run in this process (a child would import torch again for nothing this test checks)."""
    directory = tmp_path_factory.mktemp("zoo")
    spec = importlib.util.spec_from_file_location("ship_model_script", REPO / "scripts" / "ship_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main([str(synthetic_checkpoint), "--name", TEST_NAME, "--dataset", "synthetic", "--subset-size", "128",
                        "--data-note", "synthetic test set", "--zoo", str(directory)])  # fmt: skip
    assert code == 0  # a refusal prints its message to stderr, which pytest shows
    return directory


@pytest.fixture
def tiny_zoo_env(tiny_zoo, monkeypatch) -> dict:
    monkeypatch.setenv(zoo.ZOO_ENV, str(tiny_zoo))
    return zoo.read_registry(tiny_zoo)["models"][TEST_NAME]


def test_ship_model_registers_measured_figures_of_a_stripped_checkpoint(tiny_zoo, synthetic_checkpoint, synthetic):
    entry = zoo.read_registry(tiny_zoo)["models"][TEST_NAME]
    shipped, run = read_checkpoint(tiny_zoo / entry["file"]), read_checkpoint(synthetic_checkpoint)
    assert sha256_file(tiny_zoo / entry["file"]) == entry["sha256"]
    assert {"optimizer", "scheduler", "partial"} <= set(run), "the run had training state to strip"
    assert set(shipped) - {"format", "version", DIGEST_KEY} == set(SHIPPED_KEYS)
    assert shipped["history"] == run["history"] and shipped["train_config"] == entry["recipe"] == run["train_config"]
    loaded = load_checkpoint(tiny_zoo / entry["file"])
    full = evaluate(loaded.model, synthetic.test_images, synthetic.test_labels, loaded.normalization, entry["eval"]["batch_size"])
    assert (entry["top1_full"]["correct"], entry["top1_full"]["images"]) == (correct_count(full), len(synthetic.test_images))
    assert entry["epochs"] == run["epoch"]
    assert entry["train_wall_time_s"] == pytest.approx(sum(row["epoch_time_s"] for row in run["history"]), abs=0.05)
    check_against_registry(entry, tiny_zoo, synthetic)


def test_a_wrong_registry_figure_fails_the_check(tiny_zoo, synthetic, tmp_path):
    copy = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    registry = zoo.read_registry(copy)
    registry["models"][TEST_NAME]["top1_subset"]["correct"] += 1
    zoo.write_registry(registry, copy)
    with pytest.raises(AssertionError, match="in the registry"):
        check_against_registry(registry["models"][TEST_NAME], copy, synthetic)


def test_recorded_command_parses_back_into_the_recipe(tiny_zoo):
    from resnet_deploy.cli.train_commands import train

    entry = zoo.read_registry(tiny_zoo)["models"][TEST_NAME]
    words = shlex.split(entry["command"])
    assert words[:2] == ["resnet-deploy", "train"]
    parsed = {name.rstrip("_"): value for name, value in train.make_context("train", words[2:]).params.items()}
    parsed["milestones"] = [float(part) for part in parsed["milestones"].split(",")]
    compared = {key: value for key, value in entry["recipe"].items() if key in parsed}
    assert {"epochs", "lr", "batch_size", "precision", "schedule"} <= set(compared)
    assert {key: parsed[key] for key in compared} == compared


def test_an_unfinished_run_is_not_shipped(synthetic_checkpoint, synthetic, tmp_path):
    raw = read_checkpoint(synthetic_checkpoint)
    save_checkpoint(tmp_path / "partial.pt", {**raw, "step": 3})
    with pytest.raises(UserError, match="ship a finished run"):
        ship_model(tmp_path / "partial.pt", "x", synthetic, data_dir=None, data_note=None, subset_size=64, eval_batch_size=500,
                   directory=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / zoo.REGISTRY_FILE).exists() and not list((tmp_path / "zoo").rglob("*.pt"))


def test_every_checkpoint_parameter_takes_pretrained_names():
    typed = {name: param.type for name, command in main.commands.items() for param in command.params if param.name == "checkpoint"}
    assert {"eval", "quantize", "quantize-info", "export", "bench", "pipeline"} <= set(typed)
    assert all(isinstance(kind, CheckpointType) for kind in typed.values()), typed


def test_benchmark_scripts_take_pretrained_names(monkeypatch):
    """benchmarks/*.py parse --checkpoint with checkpoint.resolve_checkpoint: pretrained:resnet20 is the
    shipped file, its sha256 checked (the parser only; nothing is benchmarked)."""
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)  # the package's own zoo
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import cpu_int8_backends

    args = cpu_int8_backends.parse_args(["--export", "exports/r20", "--checkpoint", "pretrained:resnet20"])
    assert args.checkpoint.resolve() == (Path(zoo.__file__).parent / "checkpoints" / "resnet20.pt").resolve()
    assert cpu_int8_backends.parse_args(["--export", "exports/r20", "--checkpoint", "runs/r20/best.pt"]).checkpoint == Path("runs/r20/best.pt")


def test_eval_and_quantize_take_a_pretrained_name(tiny_zoo_env, tiny_zoo, synthetic_checkpoint, tmp_path):
    shipped_file = str(tiny_zoo / tiny_zoo_env["file"])
    evaluated = invoke("eval", f"pretrained:{TEST_NAME}", "--dataset", "synthetic", "--test-subset", "64")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["checkpoint"] == shipped_file

    artifact = tmp_path / "int8"
    quantized = invoke("quantize", f"pretrained:{TEST_NAME}", "--dataset", "synthetic", "--calib-size", "32", "--test-subset", "32",
                       "--method", "minmax", "-o", str(artifact))
    assert quantized.exit_code == 0, quantized.output
    assert json.loads((artifact / "manifest.json").read_text())["checkpoint"] == {"path": shipped_file, "sha256": tiny_zoo_env["sha256"]}
    # the artifact is bound to the shipped file: the name verifies, the run it was stripped from does not
    assert invoke("quantize-info", str(artifact), "--checkpoint", f"pretrained:{TEST_NAME}").exit_code == 0
    other = invoke("quantize-info", str(artifact), "--checkpoint", str(synthetic_checkpoint))
    assert other.exit_code == 2 and "different checkpoint" in other.output


def test_a_tampered_pretrained_file_is_refused(tiny_zoo, tmp_path, monkeypatch):
    copy = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    file = copy / zoo.read_registry(copy)["models"][TEST_NAME]["file"]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    monkeypatch.setenv(zoo.ZOO_ENV, str(copy))
    for command in (["eval", f"pretrained:{TEST_NAME}"], ["quantize", f"pretrained:{TEST_NAME}"], ["pipeline", "--name", "p"]):
        result = invoke(*command, "--dataset", "synthetic")
        assert result.exit_code == 2 and "failed its hash check" in result.output, (command, result.output)


@pytest.mark.parametrize(
    "command", [["eval"], ["quantize"], ["export"], ["bench", "--checkpoint"], ["pipeline", "--name", "p", "--checkpoint"]]
)
def test_an_unknown_pretrained_name_exits_2_listing_the_shipped(tiny_zoo_env, command):
    result = invoke(*command, "pretrained:nope", "--dataset", "synthetic")
    assert result.exit_code == 2, result.output
    assert f"unknown pretrained model 'nope'; shipped: {TEST_NAME}" in result.output


def test_models_shows_the_shipped_models(tiny_zoo_env):
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    pretrained = {row["model"]: row["pretrained"] for row in json.loads(result.stdout) if row["pretrained"]}
    assert pretrained == {
        "resnet20": [{"name": f"pretrained:{TEST_NAME}", "top1": tiny_zoo_env["top1_full"]["top1"], "dataset": "synthetic", "epochs": 1}]
    }


# ------------------------------------------------------------------------------------ pipeline


def test_pipeline_starts_from_the_shipped_model_by_default(tiny_zoo_env, tmp_path):
    result = invoke("pipeline", "--workdir", str(tmp_path), "--name", "p", "--dataset", "synthetic", "--test-subset", "128",
                    "--quantization", "none", "--no-fp16", *FAST_BENCH)
    assert result.exit_code == 0, result.output
    train = stages(tmp_path, "p")["train"]
    assert train["status"] == "skipped" and f"shipped pretrained:{TEST_NAME}" in train["reason"]
    results = json.loads((tmp_path / "benchmarks" / "results" / "p" / "results.json").read_text())
    assert results["model"]["checkpoint"]["sha256"] == tiny_zoo_env["sha256"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--epochs", "3"], "training option(s) --epochs given without --train"),
        (["--train", "--checkpoint", "x.pt"], "give one of them"),
        (["--model", "resnet56"], "no shipped pretrained:resnet56"),
    ],
)
def test_pipeline_start_errors(tiny_zoo_env, tmp_path, arguments, message):
    result = invoke("pipeline", "--workdir", str(tmp_path), "--name", "p", "--dataset", "synthetic", *arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_benchmark_scripts_refuse_an_unknown_pretrained_name_with_a_usage_error(monkeypatch, capsys):
    """Every benchmarks/*.py that takes a checkpoint: an unknown pretrained:NAME exits 2 with argparse's
    message naming it (checkpoint.checkpoint_argument), not a UserError traceback."""
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import cpu_int8_backends
    import cpu_latency
    import inspect_timing
    import plain_vs_residual
    import openvino_exactness
    import quantize_accuracy

    def argv_main(module):
        def run(argv):
            monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
            return module.main()
        return run

    scripts = {
        "cpu_int8_backends": (cpu_int8_backends.parse_args, ["--export", "exports/r20", "--checkpoint", "pretrained:no-such"]),
        "cpu_latency": (argv_main(cpu_latency), ["--export", "exports/r20", "--checkpoint", "pretrained:no-such"]),
        "quantize_accuracy": (argv_main(quantize_accuracy), ["--checkpoint", "pretrained:no-such"]),
        "inspect_timing": (inspect_timing.parse_args, ["pretrained:no-such"]),
        "plain_vs_residual": (plain_vs_residual.main, ["--runs", "pretrained:no-such"]),
        "openvino_exactness": (openvino_exactness.main, ["--checkpoint", "pretrained:no-such", "--data-dir", "unused"]),
    }
    for script, (parse, argv) in scripts.items():
        with pytest.raises(SystemExit) as exited:
            parse(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2, (script, err)
        assert "error: argument" in err and "unknown pretrained model 'no-such'" in err, (script, err)
        assert "Traceback" not in err, (script, err)
