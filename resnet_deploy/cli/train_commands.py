"""``train``, ``eval``, ``data`` and ``models``."""

from __future__ import annotations

import click

from . import logs
from ..evaluation import TTA_MODES
from ..fileio import ensure_writable_dir
from ..overwrite_guard import refuse_overwrite
from ..train_config import AUTO, COMPILE_MIN_STEPS, OPTIMIZERS, PRECISION_CHOICES, SCHEDULES, TrainConfig
from .options import CHECKPOINT, dataset_options, echo_json, force_option, no_empty_folders_left


@click.command()
@click.option("--model", default="resnet20", show_default=True, help="resnet20/32/44/56/110 (any 6n+2), resnet18/34/50/101/152, or plain<depth>.")
@click.option("--plain", is_flag=True, help="The plain counterpart: same layers, no shortcuts.")
@click.option("--shortcut", type=click.Choice(["A", "B"]), help="A: zero-pad identity (default for 6n+2). B: 1x1 projection (default for 18..152).")
@dataset_options
@click.option("--output", "-o", default="runs/train", show_default=True, type=click.Path(), help="Run directory: last.pt, best.pt, metrics.jsonl/csv.")
@click.option("--epochs", default=30, show_default=True, type=int, help="Passes over the training split.")
@click.option("--batch-size", default=128, show_default=True, type=int, help="Global batch size (split across ranks under torchrun).")
@click.option("--lr", default=0.1, show_default=True, type=float, help="Peak learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=TrainConfig.optimizer, show_default=True, help="sgd (with --momentum, the paper's) or adamw.")
@click.option("--momentum", default=0.9, show_default=True, type=float, help="SGD momentum (unused by AdamW).")
@click.option("--nesterov", is_flag=True, help="Nesterov momentum for SGD.")
@click.option("--weight-decay", default=5e-4, show_default=True, type=float, help="Not applied to BN and biases.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=TrainConfig.schedule, show_default=True, help="multistep is the paper's: /10 at 50% and 75% of the run.")
@click.option("--milestones", default="0.5,0.75", show_default=True, help="multistep decay points as fractions of the run.")
@click.option("--gamma", default=0.1, show_default=True, type=float, help="multistep decay factor.")
@click.option("--warmup-epochs", default=0.0, show_default=True, type=float, help="Linear lr warm-up (the paper warms ResNet110 up).")
@click.option("--label-smoothing", default=0.0, show_default=True, type=float, help="Cross-entropy label smoothing, in [0, 1).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the initial weights, the data order and the augmentation.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=TrainConfig.precision, show_default=True,
              help="Autocast precision. auto: bf16 on CPUs with native bf16 (AVX512-BF16 or AMX) and on GPUs that compute it natively, else fp32. "
              "bf16 also runs elsewhere (emulated, slower); fp16 is for CUDA GPUs (loss-scaled).")
@click.option("--channels-last/--no-channels-last", default=AUTO, help="NHWC memory format. [default: auto: on CPUs with oneDNN and on GPUs with tensor cores]")
@click.option("--compile/--no-compile", "compile_", default=AUTO,
              help=f"torch.compile the model. [default: auto: on for runs of {COMPILE_MIN_STEPS}+ optimizer steps, where Inductor finds its compiler]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--sync-bn", is_flag=True, help="Under torchrun: synchronise BatchNorm statistics across ranks.")
@click.option("--lr-scale", is_flag=True, help="Under torchrun: multiply --lr by the number of ranks.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/last.pt (after a crash, kill or Ctrl-C).")
@force_option(what="--output")
def train(load_data, output, milestones, compile_, resume, force, **options):
    """Train a CIFAR ResNet. Checkpoints are written atomically every epoch; Ctrl-C saves and stops.

    An --output holding a run of another model, dataset or setting is not overwritten: continue it
    with --resume, or start over with --force. The same command again (same inputs) starts over.

    \b
    Examples:
      resnet-deploy train --model resnet20 --data-dir ../shared/datasets/cifar10-jpeg.tar.xz -o runs/r20
      resnet-deploy train --model resnet56 --schedule multistep --epochs 164 --data-dir DATA
      resnet-deploy train --dataset synthetic --epochs 1 -o runs/smoke
    """
    from ..train import TrainConfig, train as run_training
    from ..distributed import context_from_environment

    try:
        fractions = [float(part) for part in milestones.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fractions, got {milestones!r}", param_hint="--milestones") from None
    config = TrainConfig(milestones=fractions, compile=compile_, **options)
    config.validate()
    load_data.check()
    with context_from_environment(config) as dist:
        if not dist.is_main:
            logs.quiet()
        with no_empty_folders_left(output if dist.is_main else None):
            if dist.is_main:
                # A read-only or full --output is reported before minutes of dataset decoding, not after.
                ensure_writable_dir(output, needed_bytes=64 << 20, what="--output")
            dataset = load_data()
            config.dataset = dataset.name
            if not (resume or dist.restart_count):  # a resumed run continues its own folder
                refuse_overwrite(output, "config.json", _training_differences(config, dataset), what="a training run", force=force,
                                 instead="--resume to continue it, or choose another -o")
            result = run_training(config, dataset, output, resume=resume, dist=dist)
        if dist.is_main:
            echo_json(result)


# Left "auto" on the command line, these are decided by train() (config.json holds the decision):
# not compared, so the same command line is the same inputs.
_DECIDED_LATER = ("precision", "channels_last", "compile", "device")


def _training_differences(config: TrainConfig, dataset):
    """For refuse_overwrite: the settings and dataset in which the run recorded in config.json
    differs from this one."""
    ours = {key: value for key, value in config.to_dict().items() if key != "dataset"}  # compared below, with its sizes
    our_data = dataset.describe()

    def differences(recorded: dict) -> list[str]:
        theirs = recorded.get("train") if isinstance(recorded.get("train"), dict) else {}
        their_data = recorded.get("dataset") if isinstance(recorded.get("dataset"), dict) else {}
        found = [
            f"{key} {theirs.get(key)!r}, not {value!r}"
            for key, value in ours.items()
            if not (key in _DECIDED_LATER and value in (AUTO, "auto")) and theirs.get(key) != value
        ]
        found += [f"dataset {key} {their_data.get(key)!r}, not {our_data[key]!r}"
                  for key in ("name", "train_size", "test_size") if their_data.get(key) != our_data[key]]
        return found

    return differences


@click.command("eval")
@click.argument("checkpoint", type=CHECKPOINT)
@dataset_options
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Test images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto (a CUDA GPU if there is one, else cpu), cpu, cuda, cuda:N.")
@click.option("--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
              help="flip: also report the mean of the image's and its mirror's softmax as tta_flip_top1/top5/loss; "
              "top1/top5/loss stay single crop.")
def eval_command(checkpoint, load_data, batch_size, device, tta):
    """Top-1 (and top-5), loss and images/s of CHECKPOINT on the test split (single crop; --tta flip adds
    the flip-averaged figures beside them).

    \b
    Examples:
      resnet-deploy eval pretrained:resnet20 --data-dir ../shared/datasets/cifar10-jpeg.tar.xz
      RESNET_DEPLOY_DATA=../shared/datasets/cifar10-jpeg.tar.xz resnet-deploy eval pretrained:resnet20 --tta flip --test-subset 1000
      resnet-deploy eval runs/r20/best.pt --device cpu --batch-size 500     (after resnet-deploy train -o runs/r20, RESNET_DEPLOY_DATA set)
    """
    from ..checkpoint import check_dataset_matches, load_checkpoint
    from ..evaluation import evaluate
    from ..train import resolve_device

    target = resolve_device(device)
    loaded = load_checkpoint(checkpoint, str(target))
    dataset = load_data()
    check_dataset_matches(loaded, dataset.classes, dataset.name)
    metrics = evaluate(loaded.model, dataset.test_images, dataset.test_labels, loaded.normalization, batch_size, target, tta=tta)
    echo_json({"checkpoint": str(checkpoint), "model": loaded.spec.to_dict(), "dataset": dataset.name, "device": str(target), **metrics})


@click.command()
@dataset_options
def data(load_data):
    """Decode (and cache) a dataset and print what it holds: classes, split sizes, source and the
    normalisation every checkpoint trained on it records.

    \b
    Examples:
      resnet-deploy data --data-dir ../shared/datasets/cifar10-jpeg.tar.xz
      RESNET_DEPLOY_DATA=../shared/datasets/cifar10-jpeg.tar.xz resnet-deploy data
      resnet-deploy data --dataset synthetic --train-subset 512 --test-subset 128
    """
    echo_json(load_data().describe())


@click.command()
# Capped so that 20 models x a classifier of this width stay a few hundred MB, not an out-of-memory kill.
@click.option("--num-classes", default=10, show_default=True, type=click.IntRange(min=2, max=10_000),
              help="Width of the classifier the counts are for (10: CIFAR-10, 100: CIFAR-100).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(num_classes, as_json):
    """List the models with parameter counts and FLOPs (one 32x32 image, multiply-add = 2 FLOPs), and
    which of them are shipped pretrained, with their FP32 top-1 on the full test split. Every command
    that takes a checkpoint takes pretrained:NAME.

    \b
    Examples:
      resnet-deploy models
      resnet-deploy models --num-classes 100
      resnet-deploy models --json
    """
    from ..models import ModelSpec, available_models

    rows = [
        _model_row(ModelSpec(name, num_classes, plain), name.replace("resnet", "plain") if plain else name)
        for name in available_models()
        for plain in (False, True)
    ]
    _add_pretrained(rows, num_classes)
    if as_json:
        echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"resnet-deploy models ({num_classes} classes)", caption="pretrained: use as pretrained:NAME; "
                  "top-1 is FP32, single crop, on the full test split of the dataset named")
    for column in ("model", "shortcut", "params", "GFLOPs", "pretrained"):
        table.add_column(column, justify="right" if column in ("params", "GFLOPs") else "left")
    for row in rows:
        pretrained = "\n".join(f"{p['name']}: {p['top1']:.2f}% {p['dataset']}, {p['epochs']} epochs" for p in row["pretrained"])
        table.add_row(row["model"], row["shortcut"], f"{row['params']:,}", f"{row['gflops']:.3f}", pretrained or "-")
    Console().print(table)


def _model_row(spec, label: str) -> dict:
    """One row of ``models``, counted on a meta-device shell of the model: no weights are built."""
    from ..models import build_model_shell, count_flops, count_parameters

    model = build_model_shell(spec)
    return {
        "model": label,
        "shortcut": "-" if model.plain else model.shortcut_option,
        "params": count_parameters(model),
        "gflops": round(count_flops(model) / 1e9, 4),
        "pretrained": [],
    }


def _add_pretrained(rows: list[dict], num_classes: int) -> None:
    """Attach each shipped model of this class count to its row (a depth outside the list gets its own row)."""
    from ..models import ModelSpec
    from ..zoo import PREFIX, list_pretrained

    for entry in list_pretrained():
        spec = ModelSpec.from_dict(entry["model"])
        if spec.num_classes != num_classes:
            continue
        key = (spec.display_name, "-" if spec.plain else spec.shortcut)
        row = next((row for row in rows if (row["model"], row["shortcut"]) == key), None)
        if row is None:
            row = _model_row(spec, spec.display_name)
            rows.append(row)
        row["pretrained"].append(
            {"name": PREFIX + entry["name"], "top1": entry["top1_full"]["top1"], "dataset": entry["dataset"]["name"], "epochs": entry["epochs"]}
        )


COMMANDS = [train, eval_command, data, models]
