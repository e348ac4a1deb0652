#!/usr/bin/env python
"""Training throughput of the real trainer: images/s, epoch time, peak memory, written as JSON.

It runs ``resnet_deploy.train.train`` itself (GPU-resident data, tensor augmentation, the chosen
precision / channels_last / compile) for two short epochs on the shared CIFAR-10 and reports the
second epoch, so start-up and compilation are not counted.

    python benchmarks/train_throughput.py --data-dir ../shared/datasets/cifar10-jpeg.tar.xz
    python benchmarks/train_throughput.py --device cuda --precision bf16 --channels-last --compile --batch-size 512
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resnet_deploy.data import load_dataset, synthetic_dataset  # noqa: E402
from resnet_deploy.environment import environment_info  # noqa: E402
from resnet_deploy.fileio import write_json  # noqa: E402
from resnet_deploy.train import TrainConfig, resolve_device, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--models", default="resnet20", help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=128 * 30, help="training images per timed epoch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/<cpu|gpu>-<date>/train_throughput.json)")
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    dataset = load_dataset("cifar10", data_dir) if data_dir.exists() else synthetic_dataset(train_size=args.images)
    dataset = dataset.subset(args.images, 1000)
    device = resolve_device(args.device)
    rows = []
    for model in args.models.split(","):
        config = TrainConfig(
            model=model,
            epochs=2,
            batch_size=args.batch_size,
            device=str(device),
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
        )
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            result = train(config, dataset, tmp)
            wall = time.perf_counter() - tic
        rows.append(
            {
                "model": model,
                "batch_size": args.batch_size,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "compile": args.compile,
                "images_per_sec": round(result["train_images_per_sec"], 1),
                "cifar10_epoch_time_s": round(50_000 / result["train_images_per_sec"], 1),
                "peak_memory_mb": round(result["peak_memory_mb"], 1),
                "wall_time_s": round(wall, 1),
            }
        )
        print(rows[-1], flush=True)
    kind = "gpu" if device.type == "cuda" else "cpu"
    output = Path(args.output or REPO / "benchmarks" / "results" / f"{kind}-{datetime.date.today()}" / "train_throughput.json")
    write_json(
        output,
        {
            "benchmark": "train_throughput",
            "command": " ".join(sys.argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(device),
            "environment": environment_info(),
            "dataset": dataset.describe() | {"note": "timed epoch = the second of two over the subset"},
            "results": rows,
        },
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
