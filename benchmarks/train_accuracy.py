#!/usr/bin/env python
"""Accuracy reached and training wall time for a list of models with one recipe: the plain-vs-residual
study (He et al. 2016, Fig. 6) and the time-to-accuracy figure, written as JSON.

    # the study on a GPU (the recipe the issue asks for: bf16, channels_last, compile, data on device)
    python benchmarks/train_accuracy.py --models resnet20,plain20,resnet56,plain56 --epochs 40 \
        --device cuda --precision bf16 --channels-last --compile --batch-size 512 --lr 0.4
    # a reduced study that fits a 2-core CPU
    python benchmarks/train_accuracy.py --models resnet20,plain20 --epochs 4 --train-subset 10000

The shared CIFAR-10 is a JPEG (quality 75) re-encoding: absolute accuracies sit below the published
PNG-quality figures; compare models with each other, not with the paper's table.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resnet_deploy.data import load_dataset  # noqa: E402
from resnet_deploy.environment import environment_info  # noqa: E402
from resnet_deploy.fileio import sha256_file, write_json  # noqa: E402
from resnet_deploy.train import TrainConfig, resolve_device, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--models", default="resnet20,plain20")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--schedule", default="onecycle")
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--runs-dir", default="runs/train_accuracy")
    parser.add_argument("--output")
    args = parser.parse_args()

    dataset = load_dataset("cifar10", args.data_dir)
    if args.train_subset:
        dataset = dataset.subset(args.train_subset, None)
    device = resolve_device(args.device)
    rows = []
    for model in args.models.split(","):
        config = TrainConfig(
            model=model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            schedule=args.schedule,
            nesterov=True,
            device=str(device),
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
        )
        run_dir = Path(args.runs_dir) / model
        tic = time.perf_counter()
        result = train(config, dataset, run_dir)
        wall = time.perf_counter() - tic
        rows.append(
            {
                "model": model,
                "epochs": args.epochs,
                "final_test_top1": round(result["test_top1"], 2),
                "best_test_top1": round(result["best_top1"], 2),
                "final_train_loss": round(result["train_loss"], 4),
                "training_time_s": round(sum(r["epoch_time_s"] for r in _history(run_dir)), 1),
                "wall_time_s": round(wall, 1),
                "checkpoint_sha256": sha256_file(run_dir / "last.pt"),
            }
        )
        print(rows[-1], flush=True)
    kind = "gpu" if device.type == "cuda" else "cpu"
    output = Path(args.output or REPO / "benchmarks" / "results" / f"{kind}-{datetime.date.today()}" / "train_accuracy.json")
    write_json(
        output,
        {
            "benchmark": "train_accuracy",
            "command": " ".join(sys.argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "environment": environment_info(),
            "dataset": {k: v for k, v in dataset.describe().items() if k != "classes"},
            "note": "JPEG q75 copy of CIFAR-10: absolute accuracy is below published PNG-quality figures",
            "results": rows,
        },
    )
    print(f"wrote {output}")


def _history(run_dir: Path) -> list[dict]:
    from resnet_deploy.checkpoint import read_checkpoint

    return read_checkpoint(run_dir / "last.pt")["history"]


if __name__ == "__main__":
    main()
