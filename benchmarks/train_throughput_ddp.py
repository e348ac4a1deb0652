#!/usr/bin/env python
"""Training throughput at 1, 2, ... ranks under torchrun: global images/s, speed-up and scaling efficiency.

Each rank count is one real ``torchrun --nproc-per-node N -m resnet_deploy.cli train`` run on the loopback
address (gloo on CPU, NCCL on GPUs) over the same global batch; the first epoch is a warm-up, the figure
is the median over the later epochs of the ``train_images_per_sec`` the trainer logs on rank 0 (global
images over the wall time of the training steps, all-reduce included; evaluation excluded).

    python benchmarks/train_throughput_ddp.py                         # CPU: 1 and 2 ranks, the cores split between them
    python benchmarks/train_throughput_ddp.py --device cuda --ranks 1 # the single-GPU figure on a GPU machine
    python benchmarks/train_throughput_ddp.py --device cuda --ranks 1,2,4,8 --batch-size 512 --sync-bn

On CPU the machine's cores are split evenly (OMP_NUM_THREADS = --threads / N), so 1 rank x 2 threads is
compared with 2 ranks x 1 thread on the same cores: what DDP buys on one CPU is the parallel efficiency of
processes over intra-op threads, not more compute. Writes benchmarks/results/<cpu|gpu>-<date>/train_throughput_ddp.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resnet_deploy.environment import environment_info  # noqa: E402
from resnet_deploy.fileio import write_json  # noqa: E402

SHARED_CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(
    ranks: int, threads: int | None, args: argparse.Namespace, device: str, data_options: list[str], timeout_s: int
) -> dict:
    """One torchrun training run with ``ranks`` processes of ``threads`` CPU threads each; per-epoch
    figures from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as output:
        train_args = [
            "-q", "train", "--model", args.model, *data_options, "--train-subset", str(args.images),
            "--test-subset", "500", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--device", device, "--precision", args.precision, "-o", output,
        ]  # fmt: skip
        if args.sync_bn:
            train_args.append("--sync-bn")
        if args.channels_last:
            train_args.append("--channels-last")
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "resnet_deploy.cli", *train_args,
        ]  # fmt: skip
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "RESNET_DEPLOY_QUIET": "1"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        load_before = os.getloadavg()
        tic = time.perf_counter()
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - tic
        if completed.returncode != 0:
            raise SystemExit(f"{ranks}-rank run failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
        history = [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [row["train_images_per_sec"] for row in history]
    timed = per_epoch[1:] or per_epoch
    return {
        "ranks": ranks,
        "threads_per_rank": threads,
        "images_per_sec": round(statistics.median(timed), 1),
        "images_per_sec_per_epoch": [round(v, 1) for v in per_epoch],
        "timed_epochs": f"2..{len(per_epoch)}" if len(per_epoch) > 1 else "1",
        "epoch_time_s": [round(row["epoch_time_s"], 2) for row in history],
        "final_train_loss": round(history[-1]["train_loss"], 4),
        "wall_time_s": round(wall, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join(command),
        "env": {"OMP_NUM_THREADS": threads, "GLOO_SOCKET_IFNAME": "lo"} if threads else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2", help="comma-separated process counts")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (split across ranks)")
    parser.add_argument("--images", type=int, default=128 * 20, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first is a warm-up")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--sync-bn", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads split across ranks")
    parser.add_argument("--data-dir", default=str(SHARED_CIFAR10), help="CIFAR-10; synthetic images if absent")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--output", help="JSON path (default benchmarks/results/<cpu|gpu>-<date>/train_throughput_ddp.json)")
    args = parser.parse_args()

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    ranks = [int(part) for part in args.ranks.split(",") if part.strip()]
    if args.batch_size % max(ranks):
        raise SystemExit(f"--batch-size {args.batch_size} must divide by every rank count {ranks}")
    data_dir = Path(args.data_dir)
    data_options = ["--dataset", "cifar10", "--data-dir", str(data_dir)] if data_dir.exists() else ["--dataset", "synthetic"]
    if not data_dir.exists():
        args.images = min(args.images, 2560)  # the synthetic set's size

    # On CPU each rank count gets an even share of the cores; 1 rank x 1 thread is added as the
    # per-process baseline for scaling efficiency.
    plan: list[tuple[int, int | None]] = []
    for count in ranks:
        plan.append((count, max(1, args.threads // count) if device == "cpu" else None))
    if device == "cpu" and 1 in ranks and args.threads > 1:
        plan.insert(plan.index((1, args.threads)) + 1, (1, 1))
    rows, skipped = [], []
    for count, threads in plan:
        if device == "cuda" and count > torch.cuda.device_count():
            skipped.append({"ranks": count, "reason": f"only {torch.cuda.device_count()} GPU(s)"})
            continue
        rows.append(run_ranks(count, threads, args, device, data_options, args.timeout))
        print(f"{count} rank(s) x {threads or '-'} thread(s): {rows[-1]['images_per_sec']} images/s", flush=True)
    same_cores = next((r for r in rows if r["ranks"] == 1 and r["threads_per_rank"] in (args.threads, None)), None)
    per_process = next((r for r in rows if r["ranks"] == 1 and r["threads_per_rank"] in (1, None)), None)
    for row in rows:
        if same_cores:  # what a user of this machine gains by launching N processes instead of one
            row["speedup_vs_1_rank_same_cores"] = round(row["images_per_sec"] / same_cores["images_per_sec"], 3)
        if per_process:  # N ranks against N independent copies of a 1-rank run
            row["scaling_efficiency"] = round(row["images_per_sec"] / (row["ranks"] * per_process["images_per_sec"]), 3)

    gpu_note = None
    if device == "cpu":
        gpu_note = (
            "not measured: no GPU machine was lent to this task; on a GPU machine run "
            "`python benchmarks/train_throughput_ddp.py --device cuda --ranks 1` for the single-GPU figure"
        )
    kind = "gpu" if device == "cuda" else "cpu"
    output = Path(args.output or REPO / "benchmarks" / "results" / f"{kind}-{datetime.date.today()}" / "train_throughput_ddp.json")
    write_json(
        output,
        {
            "benchmark": "train_throughput_ddp",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": device,
            "backend": "nccl" if device == "cuda" else "gloo",
            "settings": {
                "model": args.model,
                "global_batch_size": args.batch_size,
                "images_per_epoch": args.images,
                "epochs": args.epochs,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "sync_bn": args.sync_bn,
                "data": " ".join(data_options),
                "threads_total": args.threads if device == "cpu" else None,
            },
            "environment": environment_info(),
            "results": rows,
            "skipped": skipped,
            "single_gpu": gpu_note,
            "notes": [
                "images_per_sec: global images per second of training steps on rank 0 (forward, backward, "
                "gradient all-reduce, optimizer, metric all-reduce), median of the epochs after the first",
                "every rank augments the whole global batch and keeps its slice (identical augmentation for "
                "any world size): that part of the work does not shrink with more ranks",
                "figures depend on what else runs on the machine: see load_average_before/after",
            ],
        },
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
