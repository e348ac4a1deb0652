#!/usr/bin/env python3
"""Ship a finished training run as a pretrained model of the package's zoo.

    nice -n 19 .venv/bin/python scripts/ship_model.py training/resnet20/last.pt --name resnet20

Strips the training state (optimizer, scheduler, partial epoch; the recipe and per-epoch history
stay), writes resnet_deploy/zoo/checkpoints/NAME.pt, measures FP32 top-1 on the full test split and
on a fixed --subset-size test images spread evenly over the split (the figure tests/test_zoo.py re-checks), and adds or updates
NAME in resnet_deploy/zoo/registry.json with the file's sha256, the recipe, the training command and
wall time. $RESNET_DEPLOY_ZOO (or --zoo) ships into another folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_DATA = "../shared/datasets/cifar10-jpeg.tar.xz"
JPEG_NOTE = ("CIFAR-10 re-encoded as JPEG quality 75 (the only copy here, see ../shared/datasets/README.md): "
             "top-1 on the original images would differ")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_checkpoint", type=Path, help="A finished run's last.pt (or best.pt).")
    parser.add_argument("--name", required=True, help="Registry name: commands take pretrained:NAME.")
    parser.add_argument("--dataset", default="cifar10", help="Dataset the figures are measured on [cifar10].")
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help=f"[{DEFAULT_DATA}]")
    parser.add_argument("--data-note", default=JPEG_NOTE, help="What the data is, stored with the figures [the JPEG q75 note].")
    parser.add_argument("--subset-size", type=int, default=1000, help="The fixed test subset: N test images, every (test size // N)-th [1000].")
    parser.add_argument("--eval-batch-size", type=int, default=1000, help="[1000]")
    parser.add_argument("--zoo", type=Path, help="Zoo folder [$RESNET_DEPLOY_ZOO or the package's].")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from resnet_deploy.data import load_dataset
    from resnet_deploy.errors import UserError
    from resnet_deploy.zoo.ship import ship_model

    args = parse_arguments(argv)
    try:
        dataset = load_dataset(args.dataset, None if args.dataset == "synthetic" else args.data_dir)
        entry = ship_model(
            args.run_checkpoint, args.name, dataset, data_dir=None if args.dataset == "synthetic" else args.data_dir,
            data_note=args.data_note, subset_size=args.subset_size, eval_batch_size=args.eval_batch_size, directory=args.zoo,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({key: entry[key] for key in ("name", "file", "sha256", "top1_full", "top1_subset", "epochs", "train_wall_time_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
