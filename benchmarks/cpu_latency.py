#!/usr/bin/env python
"""CPU deployment figures: PyTorch FP32 eager (the baseline) against ONNX Runtime FP32 and int8 (U8S8,
the CPU scheme, and S8S8, TensorRT's scheme, when the export has it) and PyTorch int8, with accuracy
parity on the full test split, and the issue's CPU targets checked against the measurement.

    python benchmarks/cpu_latency.py --export exports/r20 --export exports/r20-cpu --quantized calibration/r20-cpu \\
        --data-dir ../shared/datasets/cifar10-jpeg.tar.xz --threads 2

Writes benchmarks/results/cpu-<date>[-<label>]/: results.json, report.md, the two plots (the same files
as ``resnet-deploy bench``) and targets.json:

    {"targets": [{"name", "goal", "measured", "met"}], "batch_size", "threads", ...}

Targets (from the bench issue, for this 2-core CPU and ResNet20): ONNX Runtime int8 >= 7,000 images/s at
batch 64 and >= 5x PyTorch FP32 eager there; int8 top-1 within 0.5 points of FP32. Figures depend on
what else runs on the machine: run it on an idle machine and keep ``--threads`` at the physical cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from resnet_deploy.backends import RunnerOptions  # noqa: E402
from resnet_deploy.backends.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from resnet_deploy.checkpoint import checkpoint_argument, load_checkpoint  # noqa: E402
from resnet_deploy.bench import BenchSettings, Thresholds, benchmark_artifacts, latency_input, measure_latency  # noqa: E402
from resnet_deploy.data import load_dataset  # noqa: E402
from resnet_deploy.fileio import write_json  # noqa: E402
from resnet_deploy.quantize.calibration import calibration_batches  # noqa: E402
from stock_flows import onnxruntime_quantize_static  # noqa: E402

INT8_GOAL_IMAGES_PER_SEC = 7000.0
INT8_GOAL_SPEEDUP = 5.0
INT8_MAX_TOP1_DROP = 0.5


def best_int8_row(rows: list[dict], batch_size: int) -> dict | None:
    """The fastest ONNX Runtime int8 CPU row at ``batch_size`` (the one a CPU deployment would ship)."""
    candidates = []
    for row in rows:
        if row["backend"] != "onnxruntime" or row["precision"] != "int8" or row["status"] != "ok":
            continue
        entry = next((e for e in row["latency"] if e["batch_size"] == batch_size and e["status"] == "ok"), None)
        if entry:
            candidates.append((entry["images_per_sec"], row, entry))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def stock_int8_onnx(fp32_onnx: Path, dataset, normalization, calib_size: int, workdir: Path) -> Path:
    """ONNX Runtime's own int8 flow on the same FP32 ONNX, as its documentation runs it for x86:
    quant_pre_process, then quantize_static (QDQ, uint8 activations, int8 per-channel weights, MinMax)
    on the same calibration images resnet-deploy uses."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "stock-pre.onnx"
    quant_pre_process(str(fp32_onnx), str(pre))
    return onnxruntime_quantize_static(
        pre, workdir / "stock-int8-u8s8.onnx", calibration_batches(dataset, calib_size), normalization, per_channel=True
    )


def interleaved_speed(paths: dict[str, Path], batch: np.ndarray, threads: int, rounds: int, settings: BenchSettings) -> dict:
    """images/s of each ONNX file, measured in alternation ``rounds`` times: a shared machine drifts
    by tens of percent within minutes, so back-to-back A/B rounds and their medians are the fair
    comparison, not two figures taken at different times."""
    runners = {name: OnnxRuntimeRunner(path, precision="int8", name=name, threads=threads).activate() for name, path in paths.items()}
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(rounds):
            for name, runner in runners.items():
                speeds[name].append(measure_latency(runner, batch, settings)["images_per_sec"])
    finally:
        for runner in runners.values():
            runner.deactivate()
    return {name: {"median_images_per_sec": statistics.median(v), "rounds": v} for name, v in speeds.items()}


def check_targets(results: dict, batch_size: int) -> list[dict]:
    rows = results["rows"]
    baseline = next(r for r in rows if r["name"] == results["baseline"])
    base_entry = next((e for e in baseline["latency"] if e["batch_size"] == batch_size and e["status"] == "ok"), None)
    int8 = best_int8_row(rows, batch_size)
    int8_entry = next((e for e in int8["latency"] if e["batch_size"] == batch_size), None) if int8 else None
    speed = int8_entry["images_per_sec"] if int8_entry else None
    ratio = speed / base_entry["images_per_sec"] if speed and base_entry else None
    drop = -int8["accuracy"]["delta_top1"] if int8 and int8.get("accuracy") else None
    label = int8["name"] if int8 else "no ONNX Runtime int8 row ran"
    return [
        {"name": f"ONNX Runtime int8 images/s at batch {batch_size} ({label})", "goal": f">= {INT8_GOAL_IMAGES_PER_SEC:,.0f}",
         "measured": speed, "met": bool(speed and speed >= INT8_GOAL_IMAGES_PER_SEC)},
        {"name": f"ONNX Runtime int8 speedup over PyTorch FP32 eager at batch {batch_size}", "goal": f">= {INT8_GOAL_SPEEDUP}x",
         "measured": ratio, "met": bool(ratio and ratio >= INT8_GOAL_SPEEDUP)},
        {"name": f"int8 top-1 drop against FP32 PyTorch ({label}), points", "goal": f"<= {INT8_MAX_TOP1_DROP}",
         "measured": drop, "met": drop is not None and drop <= INT8_MAX_TOP1_DROP},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, action="append", help="export directory (manifest.json) with FP32 and int8 ONNX files; repeat to add the other int8 scheme")
    parser.add_argument("--quantized", action="append", default=[], help="quantize artifact for a PyTorch int8 row (repeatable)")
    parser.add_argument("--checkpoint", type=checkpoint_argument, help="FP32 checkpoint, a file or pretrained:NAME (a shipped model, sha256 checked; see resnet-deploy models) [the one the export manifest names]")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--test-subset", type=int, help="accuracy on N seeded test images instead of all")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--target-batch", type=int, default=64, help="batch size the targets are checked at")
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--max-time", type=float, default=8.0)
    parser.add_argument("--label", help="suffix of the results folder name")
    parser.add_argument("--ab-rounds", type=int, default=5,
                        help="interleaved rounds against ONNX Runtime's own quantize_static int8 (0: skip that comparison)")
    parser.add_argument("--output-root", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")} | {args.target_batch})
    dataset = load_dataset(args.dataset, args.data_dir)
    if args.test_subset:
        dataset = dataset.subset(None, args.test_subset)
    name = f"cpu-{datetime.date.today().isoformat()}" + (f"-{args.label}" if args.label else "")
    output_dir = Path(args.output_root) / name
    options = RunnerOptions(backends=["pytorch", "onnxruntime"], precisions=["fp32", "int8"], device="cpu", threads=args.threads)
    settings = BenchSettings(batch_sizes=batch_sizes, min_seconds=args.min_time, max_seconds=args.max_time)
    results, paths = benchmark_artifacts(
        dataset, options, settings, run_name=name, output_dir=output_dir, checkpoint=args.checkpoint,
        export_dirs=args.export, quantized_dirs=args.quantized, thresholds=Thresholds(), command=[sys.executable, *sys.argv],
    )
    targets = check_targets(results, args.target_batch)
    versus_stock = None
    best = best_int8_row(results["rows"], args.target_batch)
    if args.ab_rounds > 0 and best is not None:
        export_dir = Path(args.export[0])
        manifest = json.loads((export_dir / "manifest.json").read_text())
        fp32 = next(a["path"] for a in manifest["artifacts"] if a["kind"] == "onnx" and a["precision"] == "fp32")
        ours = Path(best["settings"]["onnx"])  # the fastest int8 row above: what a CPU deployment ships
        normalization = load_checkpoint(results["model"]["checkpoint"]["path"]).normalization
        with tempfile.TemporaryDirectory() as workdir:
            stock = stock_int8_onnx(export_dir / fp32, dataset, normalization, 1000, Path(workdir))
            batch = latency_input(args.target_batch, dataset.test_images, normalization)
            speeds = interleaved_speed({"resnet-deploy": ours, "onnxruntime quantize_static": stock}, batch, args.threads, args.ab_rounds, settings)
        ratio = speeds["resnet-deploy"]["median_images_per_sec"] / speeds["onnxruntime quantize_static"]["median_images_per_sec"]
        versus_stock = {"batch_size": args.target_batch, "ours": str(ours), "speeds": speeds, "ratio": ratio,
                        "stock": "onnxruntime quantize_static QDQ U8S8 per-channel MinMax on the same FP32 ONNX, same 1,000 calibration images"}
        print(f"int8 at batch {args.target_batch}, {args.ab_rounds} interleaved rounds: resnet-deploy "
              f"{speeds['resnet-deploy']['median_images_per_sec']:,.0f} img/s, ONNX Runtime quantize_static "
              f"{speeds['onnxruntime quantize_static']['median_images_per_sec']:,.0f} img/s (ratio {ratio:.2f})")
    write_json(output_dir / "targets.json", {
        "run_name": name, "batch_size": args.target_batch, "threads": args.threads,
        "hardware": results["hardware"], "targets": targets, "versus_stock_int8": versus_stock, "results": "results.json",
    })
    for target in targets:
        measured = target["measured"]
        shown = "not measured" if measured is None else f"{measured:,.2f}"
        print(f"{'MET ' if target['met'] else 'MISS'}  {target['name']}: {shown} (goal {target['goal']})")
    print(f"results: {paths['results']}\nreport:  {paths['markdown']}")
    return 0 if all(t["met"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
