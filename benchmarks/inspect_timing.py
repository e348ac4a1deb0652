#!/usr/bin/env python
"""How long ``resnet-deploy inspect`` takes on this CPU, per model (issue #15: under a minute for ResNet20).

    python benchmarks/inspect_timing.py --data-dir ../shared/datasets/cifar10-jpeg.tar.xz
    python benchmarks/inspect_timing.py pretrained:resnet20 --int8 calibration/resnet20-tensorrt --images 256

For each checkpoint (default: the shipped pretrained:resnet20 and pretrained:resnet56) it quantizes
(PTQ, as ``resnet-deploy quantize`` does by default; or takes the artifact given with ``--int8``, one
per checkpoint in order), then times ``inspect_int8``, the library call ``resnet-deploy inspect``
makes, as the command runs without --export: the call exports the int8 ONNX itself, so its time
includes that export. inspect exposes no phases, only the total: the row records the wall time of
the call and inspect's own ``seconds`` (everything but writing inspect.json, inspect.md and
sqnr.png), with the image count, the layer count and which implementations ran. Quantization is
timed too, but is not part of inspect.

Writes benchmarks/results/cpu-<date>[-<label>]/inspect_timing.json (after each model, so an
interrupted run keeps the rows it finished) and inspect_timing.md. Wall times depend on what else
runs: each row records the load average before and after and the CPU time other processes used
during the call (``environment.cpu_competition``); a figure measured while ``competing`` is true
says little about this CPU. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resnet_deploy.checkpoint import checkpoint_argument, load_checkpoint  # noqa: E402
from resnet_deploy.data import load_dataset  # noqa: E402
from resnet_deploy.environment import cpu_competition, cpu_snapshot, environment_info  # noqa: E402
from resnet_deploy.fileio import atomic_write_text, write_json  # noqa: E402
from resnet_deploy.inspect import InspectOptions, inspect_int8  # noqa: E402
from resnet_deploy.inspect.debugger import DEFAULT_BATCH, DEFAULT_IMAGES  # noqa: E402
from resnet_deploy.quantize import quantize_ptq  # noqa: E402
from resnet_deploy.quantize.ptq import DEFAULT_CALIB_SIZE  # noqa: E402
from resnet_deploy.quantize_choices import DEFAULT_METHOD, METHODS, TARGETS  # noqa: E402

DEFAULT_CHECKPOINTS = ("pretrained:resnet20", "pretrained:resnet56")
GOAL_S = {"resnet20": 60.0}  # the goal, for inspect's default image count; ResNet56 is measured without one


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def int8_artifact(loaded, given: Path | None, dataset, workdir: Path, args) -> tuple[Path, dict]:
    """The calibration artifact of ``loaded``: the one given, else PTQ into ``workdir`` now (timed)."""
    if given is not None:
        return given, {"artifact_dir": str(given), "given": True}
    directory = workdir / "int8"
    tic = time.perf_counter()
    quantize_ptq(loaded, dataset, directory, target=args.target, method=args.method,
                 calib_size=args.calib_size, evaluate=False)
    return directory, {"artifact_dir": None, "given": False, "target": args.target, "method": args.method,
                       "calib_size": args.calib_size, "quantize_s": round(time.perf_counter() - tic, 2)}


def time_inspect(checkpoint: Path, int8_dir: Path, dataset, output_dir: Path, args) -> dict:
    """One timed inspect_int8 call with the load and competition around it."""
    options = InspectOptions(checkpoint=checkpoint, int8_dir=int8_dir, dataset=dataset, output_dir=output_dir,
                             images=args.images, batch_size=args.batch_size, threads=args.threads)
    load_before, before = load_average(), cpu_snapshot()
    tic = time.perf_counter()
    record = inspect_int8(options)
    wall = time.perf_counter() - tic
    competition = cpu_competition(before, cpu_snapshot())
    return {
        "inspect_wall_s": round(wall, 2),
        "inspect_recorded_s": record["seconds"],
        "images": record["images"]["count"],
        "layers": len(record["layers"]),
        "implementations_ran": [name for name, entry in record["implementations"].items() if entry.get("ran")],
        "onnx_source": record["onnx"]["source"],
        "load_average": {"before": load_before, "after": load_average()},
        "cpu_competition": competition,
    }


def measure(checkpoint: Path, given: Path | None, dataset, args) -> dict:
    loaded = load_checkpoint(checkpoint)
    row = {"model": loaded.spec.name, "checkpoint": {"path": str(checkpoint), "sha256": loaded.sha256}}
    with tempfile.TemporaryDirectory(prefix="inspect-timing-") as workdir:
        int8_dir, row["int8"] = int8_artifact(loaded, given, dataset, Path(workdir), args)
        row.update(time_inspect(checkpoint, int8_dir, dataset, Path(workdir) / "inspect", args))
    goal = GOAL_S.get(row["model"])
    if goal is not None and args.images == DEFAULT_IMAGES:
        row["goal"] = {"seconds": goal, "met": row["inspect_wall_s"] < goal,
                       "competing": bool(row["cpu_competition"] and row["cpu_competition"]["competing"])}
    return row


def markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [f"# inspect timing ({results['date']})", "",
             f"{results['environment']['cpu']}, {results['environment']['cpu_count']} CPUs; {settings['images']} images requested, "
             f"batch {settings['batch_size']}; dataset {results['dataset']['name']} ({results['dataset']['source']}).", "",
             "| model | images | layers | implementations | inspect s (wall) | inspect's own s | quantize s | load before/after | other processes' CPU share |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|"]
    for row in results["rows"]:
        share = row["cpu_competition"]["other_share"] if row["cpu_competition"] else None
        lines.append(f"| {row['model']} | {row['images']} | {row['layers']} | {', '.join(row['implementations_ran'])} | "
                     f"{row['inspect_wall_s']:.1f} | {row['inspect_recorded_s']} | {row['int8'].get('quantize_s', 'given')} | "
                     f"{row['load_average']['before']}/{row['load_average']['after']} | {'unknown' if share is None else f'{share:.0%}'} |")
    goals = [row for row in results["rows"] if "goal" in row]
    if goals:
        lines += ["", "## Goal", ""]
        for row in goals:
            goal = row["goal"]
            caveat = " (other processes were competing: not this CPU's figure)" if goal["competing"] else ""
            lines.append(f"- {'met' if goal['met'] else 'MISSED'}: inspect of {row['model']} under {goal['seconds']:.0f} s "
                         f"(measured {row['inspect_wall_s']:.1f} s){caveat}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", type=checkpoint_argument,
                        help=f"FP32 checkpoints, each a file or pretrained:NAME (a shipped model, sha256 checked) [{' '.join(DEFAULT_CHECKPOINTS)}]")
    parser.add_argument("--int8", action="append", type=Path, default=[],
                        help="the calibration artifact of each checkpoint, in order (all or none) [quantized here]")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="held-out test images inspect compares on (its default)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per forward pass (inspect's default)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads [inspect's default: all cores]")
    parser.add_argument("--target", choices=TARGETS, default="tensorrt", help="int8 scheme of the PTQ run here (quantize's default)")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="calibration method of the PTQ run here")
    parser.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE, help="calibration images of the PTQ run here")
    parser.add_argument("--label", help="suffix of the results folder name")
    parser.add_argument("--output-root", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if not args.checkpoints:
        try:
            args.checkpoints = [checkpoint_argument(name) for name in DEFAULT_CHECKPOINTS]
        except argparse.ArgumentTypeError as exc:  # the shipped models' files missing or changed
            parser.error(str(exc))
    if args.int8 and len(args.int8) != len(args.checkpoints):
        parser.error(f"--int8 given {len(args.int8)} times for {len(args.checkpoints)} checkpoints: give one per checkpoint, or none")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    date = datetime.date.today().isoformat()
    output = Path(args.output_root) / f"cpu-{date}{'-' + args.label if args.label else ''}" / "inspect_timing.json"
    dataset = load_dataset(args.dataset, args.data_dir)
    results = {
        "benchmark": "inspect_timing",
        "date": date,
        "command": "python " + " ".join(shlex.quote(a) for a in (sys.argv if argv is None else ["benchmarks/inspect_timing.py", *argv])),
        "environment": environment_info(),
        "dataset": {"name": dataset.name, "source": dataset.source, "test_images": int(len(dataset.test_images))},
        "settings": {"images": args.images, "batch_size": args.batch_size, "threads": args.threads},
        "rows": [],
    }
    for index, checkpoint in enumerate(args.checkpoints):
        row = measure(checkpoint, args.int8[index] if args.int8 else None, dataset, args)
        results["rows"].append(row)
        print(f"{row['model']}: inspect {row['inspect_wall_s']:.1f} s on {row['images']} images, {row['layers']} layers "
              f"(load {row['load_average']['before']} -> {row['load_average']['after']})", flush=True)
        write_json(output, results)  # partial results survive an interruption
    atomic_write_text(output.with_suffix(".md"), markdown(results))
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
