#!/usr/bin/env python
"""Training throughput of the real trainer per speed setting, and the other levers of a CIFAR trainer.

Every figure comes from ``resnet_deploy.train.train`` itself (data resident on the device, tensor
augmentation) run for a few short epochs over a subset; the last epoch is the steady one, the first
minus it is the warm-up (oneDNN primitive creation, and Inductor's compilation with ``compile``).

Settings (``--settings``): ``fp32``, ``fp32+channels_last``, ``bf16``, ``bf16+channels_last``,
``bf16+channels_last+compile`` (any precision of resnet_deploy.train.PRECISIONS, joined by ``+`` to
``channels_last`` and/or ``compile``).
Levers (``--levers``), each per model:
  augment       the augmentation of one batch alone (pad, crop, flip: data.augment) against a training step
  eval_batch    evaluation img/s at each of ``--eval-batch-sizes``
  compile       compilation warm-up (first epoch minus steady epoch, over the same setting without
                compile) and the steps a run needs to repay it (cf. train_config.COMPILE_MIN_STEPS)
  threads       steady img/s at each of ``--threads`` (torch.set_num_threads), CPU only

Results: benchmarks/results/<cpu|gpu>-<date>/train_throughput.{json,md}.

    python benchmarks/train_throughput.py                                   # ResNet20/56/50 on this CPU
    python benchmarks/train_throughput.py --device cuda --batch-size 512    # on a GPU
    python benchmarks/train_throughput.py --images 256 --models resnet20 --settings fp32,bf16 --levers augment  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from resnet_deploy import progress  # noqa: E402
from resnet_deploy.checkpoint import read_checkpoint  # noqa: E402
from resnet_deploy.data import augment, load_dataset, synthetic_dataset, to_tensor_images  # noqa: E402
from resnet_deploy.environment import environment_info  # noqa: E402
from resnet_deploy.evaluation import evaluate  # noqa: E402
from resnet_deploy.fileio import atomic_write_text, write_json  # noqa: E402
from resnet_deploy.models import build_model, normalize_spec  # noqa: E402
from resnet_deploy.train import PRECISIONS, TrainConfig, batch_seed, resolve_device, train  # noqa: E402
from resnet_deploy.train_speed import resolve_speed_settings  # noqa: E402

DEFAULT_SETTINGS = "fp32,fp32+channels_last,bf16,bf16+channels_last,bf16+channels_last+compile"
LEVERS = ("augment", "eval_batch", "compile", "threads")
SWITCHES = ("channels_last", "compile")


def parse_setting(name: str) -> dict:
    """'bf16+channels_last' -> {"precision": "bf16", "channels_last": True, "compile": False}."""
    precision, *switches = name.split("+")
    unknown = [s for s in switches if s not in SWITCHES]
    if precision not in PRECISIONS or unknown:
        raise SystemExit(f"--settings: {name!r} is not PRECISION[+channels_last][+compile] with PRECISION in {', '.join(PRECISIONS)}")
    return {"precision": precision, **{switch: switch in switches for switch in SWITCHES}}


def measure_training(model: str, setting: dict, dataset, args, device: torch.device) -> dict:
    """Steady img/s, epoch times and warm-up of ``args.epochs`` short epochs of the real trainer."""
    config = TrainConfig(model=model, epochs=args.epochs, batch_size=args.batch_size, device=str(device), **setting)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, dataset, tmp)
        history = read_checkpoint(Path(tmp) / "last.pt")["history"]
    first, steady = history[0], history[-1]
    steps = max(1, len(dataset.train_images) // args.batch_size)  # as train() counts them
    return {
        "images_per_sec": round(steady["train_images_per_sec"], 1),
        "step_time_s": steady["epoch_time_s"] / steps,
        "timed_epoch_s": round(steady["epoch_time_s"], 2),
        "first_epoch_s": round(first["epoch_time_s"], 2),
        "warmup_s": round(first["epoch_time_s"] - steady["epoch_time_s"], 2),
        "peak_memory_mb": round(steady["peak_memory_mb"], 1),
    }


def measure_augment(dataset, args, device: torch.device) -> float:
    """Median seconds to augment one batch (what train() does before each step), on ``device``."""
    images = to_tensor_images(dataset.train_images, device)
    seconds = []
    for step in range(args.repeats + 1):
        indices = torch.randint(0, len(images), (args.batch_size,), device=device)
        generator = torch.Generator(device=device).manual_seed(batch_seed(0, 0, step + 1))
        _sync(device)
        tic = time.perf_counter()
        augment(images[indices], generator)
        _sync(device)
        seconds.append(time.perf_counter() - tic)
    return statistics.median(seconds[1:])  # the first call pays one-off allocation


def measure_eval(model: str, dataset, batch_size: int, num_classes: int, device: torch.device) -> float:
    """Evaluation img/s (fp32, the memory format training would use here), second of two passes."""
    network = build_model(normalize_spec(model, num_classes, False, None)).to(device)
    channels_last = resolve_speed_settings(TrainConfig(), device, total_steps=0).channels_last
    if channels_last:
        network.to(memory_format=torch.channels_last)
    for _ in range(2):
        metrics = evaluate(network, dataset.test_images, dataset.test_labels, dataset.normalization, batch_size, device, channels_last)
    return round(metrics["images_per_sec"], 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_model(model: str, args, train_data, eval_data, device: torch.device, full_train_size: int) -> dict:
    settings = {}
    for name in args.settings.split(","):
        print(f"{model} {name} ...", flush=True)
        settings[name] = measure_training(model, parse_setting(name), train_data, args, device)
        settings[name]["cifar_epoch_s"] = round(full_train_size / settings[name]["images_per_sec"], 1)
        print(f"  {settings[name]}", flush=True)
    levers = {}
    reference = settings[args.settings.split(",")[0]]
    if "augment" in args.levers:
        seconds = measure_augment(train_data, args, device)
        levers["augment"] = {
            "augment_ms_per_batch": round(1000 * seconds, 3),
            "step_ms": round(1000 * reference["step_time_s"], 2),
            "share_of_step": round(seconds / reference["step_time_s"], 4),
            "step_setting": args.settings.split(",")[0],
        }
    if "eval_batch" in args.levers:
        levers["eval_batch"] = {
            str(size): measure_eval(model, eval_data, size, eval_data.num_classes, device) for size in args.eval_batch_sizes
        }
    if "compile" in args.levers:
        levers["compile"] = compile_lever(settings)
    if "threads" in args.levers and device.type == "cpu":
        levers["threads"] = threads_lever(model, args, train_data, device)
    return {"settings": settings, "levers": levers}


def compile_lever(settings: dict) -> list[dict]:
    """For each compiled setting measured beside its uncompiled twin: extra warm-up and break-even steps."""
    rows = []
    for name, compiled in settings.items():
        twin = settings.get(name.replace("+compile", ""))
        if "+compile" not in name or twin is None:
            continue
        saved_per_step = twin["step_time_s"] - compiled["step_time_s"]
        extra_warmup = compiled["warmup_s"] - twin["warmup_s"]
        rows.append(
            {
                "setting": name,
                "extra_warmup_s": round(extra_warmup, 2),
                "saved_ms_per_step": round(1000 * saved_per_step, 3),
                "break_even_steps": round(extra_warmup / saved_per_step) if saved_per_step > 0 else None,
            }
        )
    return rows


def threads_lever(model: str, args, train_data, device: torch.device) -> dict:
    before = torch.get_num_threads()
    results = {}
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            results[str(threads)] = measure_training(model, parse_setting(args.threads_setting), train_data, args, device)["images_per_sec"]
    finally:
        torch.set_num_threads(before)
    return {"setting": args.threads_setting, "images_per_sec": results}


def markdown(report: dict) -> str:
    lines = [
        f"# Training throughput ({report['device']}, batch {report['batch_size']})",
        "",
        f"`{report['command']}` on {report['date']}; steady epoch = the last of {report['epochs']} over "
        f"{report['train_images']} images; CIFAR-10 epoch = {report['full_train_size']} images at the steady rate.",
        "",
        "| model | setting | img/s | CIFAR-10 epoch (s) | warm-up (s) | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, result in report["results"].items():
        for name, row in result["settings"].items():
            lines.append(f"| {model} | {name} | {row['images_per_sec']:.0f} | {row['cifar_epoch_s']:.1f} | {row['warmup_s']:.1f} | {row['peak_memory_mb']:.0f} |")
    lines += ["", "## Levers", ""]
    for model, result in report["results"].items():
        levers = result["levers"]
        if "augment" in levers:
            a = levers["augment"]
            lines.append(f"- {model} augmentation: {a['augment_ms_per_batch']:.2f} ms a batch, {100 * a['share_of_step']:.1f}% of a {a['step_setting']} step ({a['step_ms']:.1f} ms)")
        if "eval_batch" in levers:
            lines.append(f"- {model} eval img/s by batch: " + ", ".join(f"{b}: {v:.0f}" for b, v in levers["eval_batch"].items()))
        for row in levers.get("compile", []):
            lines.append(
                f"- {model} {row['setting']}: compilation adds {row['extra_warmup_s']:.1f} s, saves {row['saved_ms_per_step']:.2f} ms a step, "
                f"repaid after {row['break_even_steps']} steps"
            )
        if "threads" in levers:
            t = levers["threads"]
            lines.append(f"- {model} {t['setting']} img/s by threads: " + ", ".join(f"{n}: {v:.0f}" for n, v in t["images_per_sec"].items()))
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--models", default="resnet20,resnet56,resnet50", help="comma-separated")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated; the first is the augment lever's reference step")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated subset of {','.join(LEVERS)}, or none")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=128 * 30, help="training images per epoch (a seeded subset)")
    parser.add_argument("--epochs", type=int, default=2, help="the last is timed, the first minus it is the warm-up")
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--eval-batch-sizes", default="250,1000,2500")
    parser.add_argument("--threads", default=f"1,{torch.get_num_threads()}")
    parser.add_argument("--threads-setting", default="bf16+channels_last")
    parser.add_argument("--repeats", type=int, default=20, help="augmentation timings (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output-dir", help="default benchmarks/results/<cpu|gpu>-<date>")
    args = parser.parse_args()
    args.levers = [] if args.levers == "none" else args.levers.split(",")
    if set(args.levers) - set(LEVERS) or args.epochs < 2:
        parser.error(f"--levers takes {','.join(LEVERS)} or none; --epochs must be at least 2")
    args.eval_batch_sizes = [int(v) for v in args.eval_batch_sizes.split(",")]
    args.threads = [int(v) for v in args.threads.split(",")]
    for name in args.settings.split(",") + [args.threads_setting]:
        parse_setting(name)
    return args


def main() -> None:
    args = parse_args()
    progress.set_enabled(False)  # one line per setting, not a progress bar per epoch
    data_dir = Path(args.data_dir)
    dataset = load_dataset("cifar10", data_dir) if data_dir.exists() else synthetic_dataset()
    train_data = dataset.subset(args.images, 256)  # a small test split: the per-epoch evaluation is not timed
    eval_data = dataset.subset(args.batch_size, args.eval_images)
    device = resolve_device(args.device)
    results = {model: run_model(model, args, train_data, eval_data, device, len(dataset.train_images)) for model in args.models.split(",")}
    kind = "gpu" if device.type == "cuda" else "cpu"
    output_dir = Path(args.output_dir or REPO / "benchmarks" / "results" / f"{kind}-{datetime.date.today()}")
    report = {
        "benchmark": "train_throughput",
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "train_images": len(train_data.train_images),
        "eval_images": len(eval_data.test_images),
        "full_train_size": len(dataset.train_images),
        "dataset": {k: v for k, v in dataset.describe().items() if k not in ("classes", "normalization")},
        "environment": environment_info(),
        "results": results,
    }
    write_json(output_dir / "train_throughput.json", report)
    atomic_write_text(output_dir / "train_throughput.md", markdown(report))
    print(f"wrote {output_dir / 'train_throughput.json'} and .md")


if __name__ == "__main__":
    main()
