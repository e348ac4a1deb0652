"""Property test of the whole command line: random option values, valid and not.

For every command, hypothesis draws option values (negative, zero and huge numbers, NaN and inf,
unknown names, missing and hostile files, flags in odd combinations) and runs the CLI in-process.
Whatever it draws, the command must:

* exit with 0 (it worked) or 2 (a clear ``error:`` / usage message), never 1 or a crash;
* never show a traceback (``result.exception`` is ``None`` or ``SystemExit``);
* write nothing outside the output directory it was given (the data cache goes to
  ``$RESNET_DEPLOY_CACHE``, also pointed inside the test's folder; ``HOME`` too).

Sizes are kept tiny (a few dozen synthetic images, 1-2 epochs, ResNet8/14) so that hundreds of runs
fit in about two minutes; the draws are derandomized so a failure reproduces.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_support import code_payloads, figures, observed, valid_members, write_tar  # noqa: F401 - figures is a fixture
from resnet_deploy import models as models_module
from resnet_deploy.checkpoint import DIGEST_KEY, content_digest
from resnet_deploy.cli import main

EXAMPLES = int(os.environ.get("RESNET_DEPLOY_FUZZ_EXAMPLES", "60"))
ALLOWED = {"out", "cache", "home"}  # the output dirs given, $RESNET_DEPLOY_CACHE and $HOME (checked apart)


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


# ------------------------------------------------------------------------------------------ the sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, synthetic_checkpoint):
    """A working folder with the inputs options may name: a real checkpoint and damaged ones, a small
    dataset folder and archive, a hostile archive, junk files, an empty folder."""
    work = tmp_path_factory.mktemp("cli-fuzz")
    (work / "ckpt").mkdir()
    shutil.copy(synthetic_checkpoint, work / "ckpt" / "valid.pt")
    blob = synthetic_checkpoint.read_bytes()
    (work / "ckpt" / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save({"x": code_payloads(work / "pwned")["os.system"]}, work / "ckpt" / "evil.pt")
    raw = torch.load(synthetic_checkpoint, weights_only=True)
    raw["model"]["num_classes"] = 100
    raw.pop(DIGEST_KEY, None)
    torch.save({**raw, DIGEST_KEY: content_digest(raw)}, work / "ckpt" / "hundred-classes.pt")
    (work / "junk.bin").write_bytes(os.urandom(3000))
    (work / "empty").mkdir()
    folder = work / "folder"
    for name, data in valid_members("", per_class=8):
        (folder / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (folder / name.lstrip("/")).write_bytes(data)
    write_tar(work / "data.tar.gz", valid_members(per_class=3))
    write_tar(work / "evil.tar.gz", [*valid_members(), ("../../escaped.png", b"x")])
    (work / "home").mkdir()
    (work / "out").mkdir()
    return work


@pytest.fixture
def in_sandbox(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.setenv("RESNET_DEPLOY_CACHE", str(sandbox / "cache"))
    monkeypatch.setenv("HOME", str(sandbox / "home"))
    monkeypatch.setenv("MPLCONFIGDIR", str(sandbox / "cache" / "matplotlib"))  # its font cache is a cache
    monkeypatch.delenv("RESNET_DEPLOY_DATA", raising=False)
    # `models` builds every architecture; for option fuzzing two of them show the same code paths.
    monkeypatch.setattr(models_module, "available_models", lambda: ["resnet20", "resnet18"])
    return sandbox


# `import onnxruntime` itself (1.2x-1.3x) writes a telemetry device id and database here; that is
# ONNX Runtime's doing, not something resnet-deploy can switch off (disable_telemetry_events does not).
THIRD_PARTY_HOME_WRITES = (".cache/Microsoft/DeveloperTools",)


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file outside the allowed folders (and ``skip``), with size and modification time."""
    found = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if relative.parts[0] in ALLOWED or any(
            str(relative).startswith(prefix) or prefix.startswith(str(relative) + "/") for prefix in (*THIRD_PARTY_HOME_WRITES, *skip)
        ):
            continue
        stat = path.lstat()
        found[str(relative)] = (stat.st_size, stat.st_mtime_ns)
    return found


def run_and_check(root: Path, args: list[str], outcomes: Counter, command: str, home_cache_allowed: bool = False) -> None:
    """Run one command line and check it; what is seen (tracebacks, files written outside, exit codes)
    is counted in ``outcomes`` before any check can fail. ``home_cache_allowed``: a blank
    $RESNET_DEPLOY_CACHE means the default cache, ~/.cache/resnet-deploy, which is then allowed."""
    before = snapshot(root)
    home_before = snapshot(root / "home", skip=(".cache/resnet-deploy",) if home_cache_allowed else ())
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["-q", *args])
    elapsed = time.perf_counter() - started
    if elapsed > SLOWEST.get(command, (0.0, ""))[0]:
        SLOWEST[command] = (round(elapsed, 1), f"exit {result.exit_code}: {' '.join(args)}")
    context = f"resnet-deploy -q {' '.join(args)}\n{result.output}"
    crashed = not (result.exception is None or isinstance(result.exception, SystemExit)) or "Traceback" in result.output
    after = snapshot(root)
    home_after = snapshot(root / "home", skip=(".cache/resnet-deploy",) if home_cache_allowed else ())
    written = [name for name in after.keys() | before.keys() if after.get(name) != before.get(name)]
    written += [f"HOME/{name}" for name in home_after.keys() | home_before.keys() if home_after.get(name) != home_before.get(name)]
    code_ran = (root / "pwned").exists() or (root.parent / "escaped.png").exists()
    outcomes["tracebacks"] += crashed
    outcomes["files written outside"] += len(written)
    outcomes["code ran or escaped"] += code_ran
    outcomes[f"{command}: exit {'traceback' if crashed else result.exit_code}"] += 1
    assert not crashed, f"{context}\n{result.exc_info}"
    # Exit 1 is kept for one outcome: a verification gate (parity, accuracy drop) that the model
    # failed. The tool worked; the message says which check failed.
    verified = command in VERIFYING and result.exit_code == 1 and "verification failed:" in result.output
    assert result.exit_code in (0, 2) or verified, context
    assert not written, f"files written outside the output dir or into HOME ({written}): {context}"
    assert not code_ran
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
        assert lines, f"exit 2 without an error line: {context}"
        MESSAGES[command].add(_shape(lines[-1]))


MESSAGES: dict[str, set] = {}
VERIFYING = {"export", "bench", "pipeline"}
SLOWEST: dict[str, tuple[float, str]] = {}


def _shape(message: str) -> str:
    """The message with paths and numbers blanked, to count distinct kinds of error."""
    import re

    return re.sub(r"(/\S+|\d+(\.\d+)?|'[^']*'|\"[^\"]*\")", "_", message)[:100]


# ------------------------------------------------------------------------------------------ value pools

# Numbers users mistype and numbers that break naive code: zero, negatives, huge, NaN, inf, text.
bad_ints = st.sampled_from(["0", "-1", "-3", str(10**12), str(2**63), "1.5", "x", ""])
bad_subset = st.sampled_from(["0", "-1", "-3", "1.5", "x", ""])
bad_floats = st.sampled_from(["nan", "inf", "-inf", "-1", "1e30", "abc", "", "1e999"])
bad_text = st.sampled_from(["", " ", "abc", "-1", "1,2,x", "../..", "ü", "--help"])
# Device strings that look almost right: an empty or negative index, the wrong case, a space, an index
# past any GPU here, another device type's index.
devices_bad = st.sampled_from(["cuda", "cuda:1", "meta", "mps", "gpu0", "", "cpu:x", "cuda:", "cuda:-1", "cpu:0", "CUDA", "cuda:99", " cpu",
                               "cuda:0:1", "cuda:1.0"])
checkpoints_bad = st.sampled_from(["ckpt/truncated.pt", "ckpt/evil.pt", "ckpt/hundred-classes.pt", "missing.pt", "ckpt", "junk.bin",
                                   "pretrained:nope", "pretrained:"])


def ints(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(str)


def floats(low: float, high: float) -> st.SearchStrategy[str]:
    return st.floats(low, high, allow_nan=False).map(repr)


FLAG = object()  # (name, FLAG, None): a flag, given or not; (name, None, FLAG): a flag that is a mistake here


@st.composite
def command_line(draw, head: list[str], specs: list[tuple[str, object, object]], positional=None, mistakes=(0, 1, 1, 1, 2)):
    """``head`` + options. Each option is left out or given a valid value; then 0, 1 or 2 options
    (or the positional argument) are given a wrong value instead: valid runs (slow) are a fifth of
    the draws, single mistakes (fast) most of the rest."""
    slots = [("positional", *positional)] if positional else []
    slots += specs
    wrong = set(draw(st.permutations(range(len(slots))))[: draw(st.sampled_from(mistakes))])
    args = list(head)
    for index, (name, valid, invalid) in enumerate(slots):
        if index in wrong and invalid is not None:
            value = None if invalid is FLAG else draw(invalid)
        elif name == "positional":
            value = draw(valid)
        elif valid is not None and draw(st.booleans()):
            value = draw(valid) if valid is not FLAG else None
        else:
            continue
        if name == "positional":
            args.insert(len(head), value)
        elif value is None:
            args.append(name)
        else:
            args += [name, value]
    return args


DATASET_SPECS = [
    ("--dataset", st.sampled_from(["synthetic", "synthetic", "imagefolder"]), st.sampled_from(["cifar10", "cifar100", "mnist", "SYNTHETIC"])),
    ("--data-dir", st.sampled_from(["folder", "data.tar.gz"]), st.sampled_from(["missing/dir", "junk.bin", "empty", "evil.tar.gz", "ckpt"])),
    ("--train-subset", ints(16, 48), bad_subset),  # (a huge subset is valid: the whole split, too slow here)
    ("--test-subset", ints(8, 32), bad_subset),
]


def with_dataset(specs):
    """Dataset options, with --train-subset/--test-subset given whenever the dataset is synthetic so runs stay tiny."""
    return DATASET_SPECS + specs


def keep_train_small(args: list[str]) -> list[str]:
    """Defaults are made for real runs (30 epochs, batch 128); the fuzzed runs stay tiny unless drawn."""
    if "--epochs" not in args:
        args += ["--epochs", "1"]
    if "--batch-size" not in args:
        args += ["--batch-size", "8"]
    return keep_small(args)


def keep_small(args: list[str]) -> list[str]:
    if "imagefolder" in args and "--data-dir" not in args:
        args += ["--data-dir", "folder"]
    if "--train-subset" not in args:
        args += ["--train-subset", "32"]
    if "--test-subset" not in args:
        args += ["--test-subset", "16"]
    return args


# ------------------------------------------------------------------------------------------ core commands

train_args = command_line(
    ["train", "-o"],
    with_dataset(
        [
            ("--model", st.sampled_from(["resnet8", "plain8", "resnet14", "RESNET8"]), st.sampled_from(["resnet21", "resnet1208", "foo", "", "resnet0"])),
            ("--shortcut", st.sampled_from(["A", "B"]), st.just("C")),
            ("--plain", FLAG, None),
            ("--epochs", st.sampled_from(["1", "2"]), st.sampled_from(["0", "-1", "x", str(2**63)])),
            ("--batch-size", ints(4, 16), st.sampled_from(["0", "-2", "49", str(10**9)])),
            ("--lr", floats(1e-4, 0.5), bad_floats),
            ("--optimizer", st.sampled_from(["sgd", "adamw"]), st.just("lamb")),
            ("--momentum", floats(0, 0.99), bad_floats),
            ("--nesterov", FLAG, None),
            ("--weight-decay", floats(0, 1e-2), bad_floats),
            ("--schedule", st.sampled_from(["multistep", "cosine", "onecycle", "constant"]), st.just("linear")),
            ("--milestones", st.sampled_from(["0.5,0.75", "0.9", ""]), st.sampled_from(["1.5", "x", "nan", "-0.1,0.2"])),
            ("--gamma", floats(0.01, 1), bad_floats),
            ("--warmup-epochs", floats(0, 0.9), bad_floats),
            ("--label-smoothing", floats(0, 0.5), bad_floats),
            ("--seed", ints(0, 2**32 - 1), st.sampled_from(["-1", str(2**32), str(2**70), "x"])),
            ("--precision", st.sampled_from(["fp32", "bf16"]), st.just("fp64")),
            ("--channels-last", FLAG, None),
            ("--device", st.sampled_from(["cpu", "auto"]), devices_bad),
            ("--resume", FLAG, None),
        ]
    ),
    positional=(st.sampled_from(["out/a", "out/b", "out/nested/run"]), st.sampled_from(["junk.bin", "ckpt/valid.pt"])),
).map(keep_train_small)

eval_args = command_line(
    ["eval"],
    with_dataset([("--batch-size", ints(1, 2000), bad_ints), ("--device", st.sampled_from(["cpu", "auto"]), devices_bad)]),
    positional=(st.just("ckpt/valid.pt"), checkpoints_bad),
).map(keep_small)

data_args = command_line(["data"], with_dataset([("--cache-dir", st.just("cache/x"), st.sampled_from(["junk.bin", "ckpt/valid.pt"]))])).map(keep_small)

models_args = command_line(["models"], [("--num-classes", ints(2, 10_000), st.sampled_from(["1", "0", "-5", "10001", "x"])), ("--json", FLAG, None)])

# --cache-dir naming a file: the cache is skipped with a note and nothing is written.


@pytest.mark.parametrize(
    ("command", "strategy", "examples"),
    [
        ("train", train_args, EXAMPLES * 3),
        ("eval", eval_args, EXAMPLES),
        ("data", data_args, EXAMPLES),
        ("models", models_args, EXAMPLES // 3),
    ],
)
def test_core_commands_never_crash_or_write_outside(in_sandbox, figures, command, strategy, examples):
    fuzz_command(in_sandbox, figures, command, strategy, examples)


def fuzz_command(sandbox, figures, command: str, strategy, examples: int) -> None:
    """Draw ``examples`` command lines from ``strategy``, check each with :func:`run_and_check`,
    and record the outcome counts and the distinct error messages as figures: all counted from what
    the runs did, and recorded also when a run fails the test."""
    MESSAGES[command] = set()

    def computed() -> dict:
        return {"invocations": sum(v for k, v in outcomes.items() if k.startswith(f"{command}: exit ")),
                "distinct error messages": len(MESSAGES[command]), "slowest run s": SLOWEST.get(command, (0, ""))[0]}  # fmt: skip

    with observed(figures, f"cli_fuzz_{command}", "tracebacks", "files written outside", "code ran or escaped", extra=computed) as outcomes:

        @fuzz_settings(examples)
        @given(strategy)
        def check(args):
            run_and_check(sandbox, args, outcomes, command)

        check()
    print("slowest:", SLOWEST.get(command))
    print("\n".join(sorted(MESSAGES[command])))


# ------------------------------------------------------------------------------------------ later stages
# Their valid runs take many seconds (calibration, ONNX export), so the draws lean towards mistakes;
# the commands are only fuzzed when they are registered.


def _registered(name: str) -> bool:
    return name in main.commands


stage_strategies = {
    "quantize": command_line(
        ["quantize", "-o", "out/q"],
        with_dataset(
            [
                ("--target", st.sampled_from(["tensorrt", "cpu"]), st.just("gpu")),
                ("--method", st.sampled_from(["minmax", "percentile"]), st.just("max")),
                ("--percentile", floats(90, 100), bad_floats),
                ("--calib-size", ints(8, 16), bad_ints),
                ("--keep-float", st.sampled_from(["first", "last", "first,last"]), st.sampled_from(["nope", "layers.9.9.conv1", ","])),
                ("--eval-batch-size", ints(1, 64), bad_ints),
                ("--qat", None, FLAG),  # QAT runs are too slow to fuzz; asking for one is checked
                ("--epochs", st.just("1"), bad_ints),
                ("--lr", floats(1e-5, 1e-2), bad_floats),
                ("--batch-size", ints(4, 16), bad_ints),
                ("--freeze-observers-epoch", ints(0, 2), bad_ints),
                ("--freeze-bn-epoch", ints(0, 2), bad_ints),
                ("--resume", None, FLAG),  # without --qat: a mistake
                ("--sensitivity-images", ints(100, 200), bad_ints),
            ]
        ),
        positional=(st.just("ckpt/valid.pt"), checkpoints_bad),
    ).map(lambda args: keep_small(args + ([] if "--calib-size" in args else ["--calib-size", "16"]))),
    "export": command_line(
        ["export", "--output-dir", "out/exports", "--no-tensorrt"],
        with_dataset(
            [
                ("--int8", st.just("out/q"), st.sampled_from(["missing", "empty", "ckpt", "junk.bin"])),
                ("--fp16", FLAG, None),
                ("--static-batch", ints(1, 8), bad_ints),
                ("--opset", st.sampled_from(["18", "20"]), st.sampled_from(["7", "17", "99", "-1", "x"])),
                ("--min-batch", ints(1, 2), bad_ints),
                ("--opt-batch", ints(1, 8), bad_ints),
                ("--max-batch", ints(8, 64), bad_ints),
                ("--parity-images", ints(1, 16), bad_ints),
                ("--parity-batch", ints(1, 16), bad_ints),
                ("--threads", ints(1, 2), bad_ints),
            ]
        ),
        positional=(st.just("ckpt/valid.pt"), checkpoints_bad),
    ).map(keep_small),
    "bench": command_line(
        # The latency sweep takes a minute even when tiny; its options are still parsed and checked.
        ["bench", "--output-root", "out/bench", "--no-latency", "--max-time", "0.05", "--min-time", "0", "--warmup", "0"],
        with_dataset(
            [
                ("--checkpoint", st.just("ckpt/valid.pt"), checkpoints_bad),
                ("--export", st.just("out/exports/ckpt"), st.sampled_from(["missing", "empty", "ckpt"])),
                ("--quantized", st.just("out/q"), st.sampled_from(["missing", "empty"])),
                ("--backend", st.sampled_from(["pytorch", "onnxruntime"]), st.sampled_from(["tpu", ""])),
                ("--precision", st.sampled_from(["fp32", "int8", "all"]), st.sampled_from(["fp8", ""])),
                ("--batch-sizes", st.sampled_from(["1", "1,2"]), st.sampled_from(["0", "-1", "x", "", "4,100000"])),
                ("--accuracy-batch-size", ints(1, 64), bad_ints),
                ("--device", st.just("cpu"), devices_bad),
                ("--threads", ints(1, 2), bad_ints),
                ("--min-iterations", ints(1, 3), st.sampled_from(["0", "-5"])),
                ("--verify", FLAG, None),
                ("--max-int8-drop", floats(0, 100), bad_floats),
                ("--name", st.sampled_from(["run", "run2"]), st.sampled_from(["../escape", "a/b", "", "."])),
            ]
        ),
    ).map(keep_small),
    "quantize-info": command_line(
        ["quantize-info"],
        [("--checkpoint", st.just("ckpt/valid.pt"), checkpoints_bad)],
        positional=(st.just("out/q"), st.sampled_from(["missing", "empty", "ckpt", "junk.bin"])),
    ),
    "check-engine": command_line(
        ["check-engine"],
        [("--onnx", st.just("junk.bin"), st.just("missing.onnx"))],
        positional=(st.just("junk.bin"), st.sampled_from(["missing.engine", "ckpt/valid.pt", "empty"])),
    ),
    "build-engine": command_line(
        ["build-engine"],
        [
            ("--precision", st.sampled_from(["fp32", "int8"]), st.just("fp64")),
            ("--min-batch", ints(1, 2), bad_ints),
            ("--max-batch", ints(8, 64), bad_ints),
            ("--compute-capability", st.just("8.6"), st.sampled_from(["x", "99.9", ""])),
        ],
        positional=(st.just("out/exports/ckpt"), st.sampled_from(["missing", "empty", "junk.bin"])),
    ),
    "pipeline": command_line(
        ["pipeline", "--name", "p", "--workdir", "out/pipe", "--no-tensorrt", "--no-latency", "--train", "--epochs", "1", "--calib-size", "16"],
        with_dataset(
            [
                ("--name", st.just("p2"), st.sampled_from(["../up", "", "a/b"])),
                ("--checkpoint", st.just("ckpt/valid.pt"), checkpoints_bad),
                ("--model", st.just("resnet8"), st.just("foo")),
                ("--train-device", st.just("cpu"), devices_bad),
                ("--train-batch-size", ints(4, 16), bad_ints),
                ("--lr", floats(1e-3, 0.1), bad_floats),
                ("--quantization", st.sampled_from(["ptq", "none"]), st.just("fp4")),
                ("--int8-targets", st.sampled_from(["cpu", "tensorrt"]), st.sampled_from(["gpu", ""])),
                ("--batch-sizes", st.just("1"), st.sampled_from(["0", "x"])),
                ("--max-batch", ints(8, 64), bad_ints),
            ]
        ),
        mistakes=(1, 1, 2),  # a valid pipeline runs every stage (minutes): only mistakes are drawn
    ).map(keep_small),
}

STAGE_EXAMPLES = int(os.environ.get("RESNET_DEPLOY_FUZZ_STAGE_EXAMPLES", "10"))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["quantize", "quantize-info", "export", "bench", "build-engine", "check-engine", "pipeline"])
def test_stage_commands_never_crash_or_write_outside(in_sandbox, figures, command):
    if not _registered(command):
        pytest.skip(f"{command} is not a registered command")
    fuzz_command(in_sandbox, figures, command, stage_strategies[command], STAGE_EXAMPLES)


def test_verify_thresholds_refuse_nan(in_sandbox):
    result = CliRunner().invoke(
        main,
        ["-q", "bench", "--checkpoint", "ckpt/valid.pt", "--dataset", "synthetic", "--train-subset", "32", "--test-subset", "16",
         "--no-latency", "--backend", "pytorch", "--verify", "--max-int8-drop", "nan", "--output-root", "out/bench-nan"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--max-int8-drop" in result.output, result.output


# ------------------------------------------------------------------------------------------ environment variables

# Values of resnet-deploy's own environment variables (grep os.environ in resnet_deploy/): blank, junk,
# negative, huge, a file where a folder is meant, a folder inside a file, a zoo without or with a bad registry.
ENVIRONMENT_VALUES = {
    "RESNET_DEPLOY_CACHE": ["", "   ", "cache/from-env", "junk.bin", "junk.bin/sub"],
    "RESNET_DEPLOY_MAX_ARCHIVE_BYTES": ["", "abc", "-1", "0", "1e9", "10", " 5000000 ", "9" * 30],
    "RESNET_DEPLOY_ZOO": ["", "missing-zoo", "junk.bin", "empty", "zoo/not-a-registry", "zoo/entry-without-file", "zoo/entry-outside"],
    "RESNET_DEPLOY_TENSORRT_FLAVOUR": ["", "bogus", "TENSORRT-RTX", " tensorrt ", "tensorrt_rtx"],
    "RESNET_DEPLOY_QUIET": ["", "0", "1", "no"],
}
ENVIRONMENT_COMMANDS = [
    ["data", "--dataset", "imagefolder", "--data-dir", "data.tar.gz"],
    ["models", "--json"],
    ["eval", "pretrained:resnet20", "--dataset", "synthetic", "--test-subset", "16"],
    ["check-engine", "engine/model.sm86.engine"],
]


def _environment_inputs(sandbox: Path) -> None:
    """Zoos with broken registries and an engine with a valid sidecar (check-engine then imports TensorRT,
    which is where the flavour variable is read). Made once, before any snapshot."""
    import hashlib
    import json

    zoo = sandbox / "zoo"
    if zoo.exists():
        return
    entry = {"name": "resnet20", "file": "checkpoints/resnet20.pt", "sha256": "0" * 64,
             "model": {"name": "resnet20", "num_classes": 10}, "dataset": {"name": "cifar10"}, "top1_full": {"top1": 1.0}, "epochs": 1}  # fmt: skip
    registries = {
        "not-a-registry": [],
        "entry-without-file": {"format": "resnet-deploy/zoo", "version": 1, "models": {"resnet20": {k: v for k, v in entry.items() if k != "file"}}},
        "entry-outside": {"format": "resnet-deploy/zoo", "version": 1, "models": {"resnet20": {**entry, "file": "../ckpt/valid.pt"}}},
    }
    for name, registry in registries.items():
        (zoo / name).mkdir(parents=True)
        (zoo / name / "registry.json").write_text(json.dumps(registry))
    engine = sandbox / "engine" / "model.sm86.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"not really an engine")
    sidecar = {
        "format": "resnet-deploy/tensorrt-engine", "version": 1, "flavour": "tensorrt-rtx", "tensorrt_version": "1.7.1.116",
        "precision": "fp32", "target": {"compute_capability": "8.6", "gpu_name": None, "current_gpu": False},
        "engine": {"file": engine.name, "sha256": hashlib.sha256(engine.read_bytes()).hexdigest(), "bytes": engine.stat().st_size},
        "onnx": {"file": "model.onnx", "sha256": "0" * 64, "scheme": None},
        "shapes": {"input": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [4, 3, 32, 32]}, "logits": [-1, 10]},
        "min_batch": 1, "opt_batch": 1, "max_batch": 4, "dynamic_batch": True,
    }  # fmt: skip
    (engine.parent / (engine.name + ".json")).write_text(json.dumps(sidecar))


ENVIRONMENT_EXAMPLES = int(os.environ.get("RESNET_DEPLOY_FUZZ_ENV_EXAMPLES", "40"))


def test_environment_variables_never_crash_or_write_outside(in_sandbox, figures, monkeypatch):
    """One to three of resnet-deploy's environment variables set to drawn values, then a command that
    reads them: exit 0 or 2 with an ``error:`` line naming the problem, no traceback, nothing written
    outside the sandbox's output and cache folders (a blank cache variable means the default cache in
    HOME, which is then allowed). The import-time parse of RESNET_DEPLOY_MAX_ARCHIVE_BYTES, which
    in-process cannot show, is tested in a real process in test_reliability_formats.py."""
    _environment_inputs(in_sandbox)
    MESSAGES["environment"] = set()
    names = sorted(ENVIRONMENT_VALUES)

    def computed() -> dict:
        return {"invocations": sum(v for k, v in outcomes.items() if k.startswith("environment: exit ")),
                "distinct error messages": len(MESSAGES["environment"])}  # fmt: skip

    drawn = st.tuples(
        st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True).flatmap(
            lambda chosen: st.tuples(*[st.tuples(st.just(n), st.sampled_from(ENVIRONMENT_VALUES[n])) for n in chosen])
        ),
        st.sampled_from(ENVIRONMENT_COMMANDS),
    )
    with observed(figures, "cli_fuzz_environment", "tracebacks", "files written outside", "code ran or escaped", extra=computed) as outcomes:

        @fuzz_settings(ENVIRONMENT_EXAMPLES)
        @given(drawn)
        def check(case):
            settings_, args = case
            with pytest.MonkeyPatch.context() as patch:
                for name, value in settings_:
                    patch.setenv(name, value)
                blank_cache = any(name == "RESNET_DEPLOY_CACHE" and not value.strip() for name, value in settings_)
                run_and_check(in_sandbox, list(args), outcomes, "environment", home_cache_allowed=blank_cache)

        check()
    print("\n".join(sorted(MESSAGES["environment"])))
