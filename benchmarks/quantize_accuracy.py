#!/usr/bin/env python
"""int8 accuracy of resnet-deploy's quantization against FP32 and against the stock int8 flows.

    python benchmarks/quantize_accuracy.py --checkpoint /work/artifacts/r20/best.pt \\
        --data-dir ../shared/datasets/cifar10-jpeg.tar.xz [--qat-epochs 2] [--sensitivity]

Every figure is top-1 on the full CIFAR-10 test split (10,000 images); calibration uses the same
deterministic 1,000 training images (``data.calibration_indices``) for every flow:

* resnet-deploy PTQ, both targets (``tensorrt``: signed symmetric int8; ``cpu``: U8S8) x every
  calibration method, with and without bias correction, and with the first conv / last FC in float;
* the stock flows as a user would run them: ONNX Runtime ``quantize_static`` (QDQ, defaults: per-tensor
  weights, MinMax calibration; and the per-channel variant), torchao PT2E with
  ``X86InductorQuantizer`` and its default config;
* optionally QAT (``--qat-epochs``) and the per-layer sensitivity report (``--sensitivity``).

Writes benchmarks/results/cpu-<date>[-<label>]/quantize_accuracy.json (and a Markdown table next to it)
with the hardware, versions and command. Wall times depend on what else runs on the machine; the load
average at each measurement is recorded with it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnet_deploy.checkpoint import checkpoint_argument, load_checkpoint  # noqa: E402
from resnet_deploy.data import load_dataset, normalized_batches  # noqa: E402
from resnet_deploy.environment import environment_info  # noqa: E402
from resnet_deploy.evaluation import classification_metrics, predict_logits  # noqa: E402
from resnet_deploy.fileio import atomic_write_text, write_json  # noqa: E402
from resnet_deploy.quantize import METHODS, load_quantized, quantize_qat, sensitivity_analysis  # noqa: E402
from resnet_deploy.quantize.calibration import calibration_batches  # noqa: E402
from resnet_deploy.quantize.capture import example_input  # noqa: E402
from resnet_deploy.quantize.ptq import ptq_convert  # noqa: E402
from stock_flows import onnxruntime_quantize_static  # noqa: E402

PTQ_GOAL_RESNET20 = 0.3  # points of top-1 lost at most (the target for ResNet20/56)
PTQ_GOAL = {"resnet20": 0.3, "resnet56": 0.3, "resnet50": 0.2}
QAT_GOAL = 0.1
CALIBRATION_GOAL_S = 30.0


def compare(logits: torch.Tensor, fp32_logits: torch.Tensor, labels: np.ndarray) -> dict:
    """Top-1 and its change against FP32, with the paired 95% interval of that change: the delta is
    (images int8 fixes - images int8 breaks) / n, so its noise comes from those discordant images."""
    metrics = classification_metrics(logits, labels)
    fp32 = classification_metrics(fp32_logits, labels)
    labels_t = torch.as_tensor(labels)
    int8_right = logits.argmax(1) == labels_t
    fp32_right = fp32_logits.argmax(1) == labels_t
    fixed = int((int8_right & ~fp32_right).sum())
    broken = int((~int8_right & fp32_right).sum())
    n = len(labels)
    # McNemar-style standard error of a paired difference of proportions, in points
    stderr = 100.0 * np.sqrt(max(fixed + broken - (fixed - broken) ** 2 / n, 0.0)) / n
    return {
        "top1": metrics["top1"],
        "delta_top1": metrics["top1"] - fp32["top1"],
        "delta_top1_ci95": round(1.96 * stderr, 3),
        "images_fixed": fixed,
        "images_broken": broken,
        "agreement_top1": 100.0 * (logits.argmax(1) == fp32_logits.argmax(1)).float().mean().item(),
        "logit_mse": float(((logits - fp32_logits) ** 2).mean()),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------ baselines


def torchao_x86_stock(model, calibration, normalization, test_images):
    """torchao PT2E with X86InductorQuantizer's default config (uint8 asymmetric activations,
    HistogramObserver; int8 per-channel weights), as its tutorial runs it."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    tic = time.perf_counter()
    captured = torch.export.export(
        _copy(model).eval(), (example_input(),), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},)
    ).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for batch in normalized_batches(calibration, normalization, 100):
            prepared(batch)
    converted = convert_pt2e(prepared)
    seconds = time.perf_counter() - tic
    return predict_logits(converted, test_images, normalization), seconds


def _copy(model):
    import copy

    return copy.deepcopy(model)


def onnxruntime_stock(model, calibration, normalization, test_images, workdir: Path, per_channel: bool, symmetric: bool = False):
    """ONNX Runtime quantize_static on the FP32 ONNX export: QDQ format, QInt8 weights, MinMax
    calibration (its defaults), per-tensor or per-channel weights; QUInt8 activations (its default), or
    with ``symmetric`` QInt8 symmetric activations: the scheme TensorRT's explicit quantization needs
    (what a user preparing a TensorRT model with ONNX Runtime's tool would ask for)."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = workdir / "fp32.onnx"
    if not fp32_path.exists():
        program = torch.onnx.export(
            _copy(model).eval(), (example_input(),), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        program.save(str(fp32_path))
        quant_pre_process(str(fp32_path), str(workdir / "fp32-pre.onnx"))
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    int8_path = workdir / f"int8-{'per-channel' if per_channel else 'per-tensor'}{'-s8s8' if symmetric else ''}.onnx"
    tic = time.perf_counter()
    onnxruntime_quantize_static(workdir / "fp32-pre.onnx", int8_path, calibration, normalization, per_channel=per_channel, symmetric=symmetric)
    seconds = time.perf_counter() - tic
    options = ort.SessionOptions()
    int8 = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(int8.run(None, {input_name: x.numpy()})[0])

    def forward_fp32(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])

    return predict_logits(forward, test_images, normalization), seconds, predict_logits(forward_fp32, test_images, normalization)


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=checkpoint_argument, help="FP32 checkpoint, a file or pretrained:NAME (a shipped model, sha256 checked; see resnet-deploy models)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    parser.add_argument("--calib-size", type=int, default=1000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default="tensorrt,cpu")
    parser.add_argument("--default-method", default="entropy", help="The method the variants (bias correction, keep-float) use.")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--qat-epochs", type=int, default=0, help="Also run QAT for this many epochs (0: skip).")
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--sensitivity", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--output", help="JSON path [benchmarks/results/cpu-<date>[-label]/quantize_accuracy.json]")
    args = parser.parse_args()

    torch.manual_seed(0)
    date = datetime.date.today().isoformat()
    output = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"cpu-{date}{'-' + args.label if args.label else ''}" / "quantize_accuracy.json"
    dataset = load_dataset("cifar10", args.data_dir)
    loaded = load_checkpoint(args.checkpoint)
    normalization = loaded.normalization
    calibration = calibration_batches(dataset, args.calib_size)
    test_images, labels = dataset.test_images, dataset.test_labels
    fp32_logits = predict_logits(loaded.model, test_images, normalization)
    fp32 = classification_metrics(fp32_logits, labels)
    print(f"FP32 top-1 {fp32['top1']:.2f}% on {len(labels)} test images", flush=True)

    results = {
        "benchmark": "quantize_accuracy",
        "date": date,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "environment": environment_info(),
        "checkpoint": {
            "path": str(loaded.path),
            "sha256": loaded.sha256,
            "model": loaded.spec.to_dict(),
            "epochs_trained": loaded.raw.get("epoch"),
            "train_config": loaded.raw.get("train_config"),
        },
        "dataset": {"name": dataset.name, "source": dataset.source, "test_images": int(len(labels)), "calibration_images": int(len(calibration)),
                    "calibration_split": "training images, data.calibration_indices(seed=2016)"},
        "fp32": fp32,
        "ours": [],
        "baselines": [],
    }

    def record(kind: str, row: dict) -> None:
        results[kind].append(row)
        print(f"  {row['name']:<48} top-1 {row['top1']:6.2f}  delta {row['delta_top1']:+.2f}  agree {row['agreement_top1']:.2f}%", flush=True)
        write_json(output, results)  # partial results survive an interruption

    def ours(name: str, target: str, method: str, bias_correction: bool, keep_float=()):
        load = load_average()
        converted, timings = ptq_convert(
            loaded.model, calibration, normalization, target=target, method=method, bias_correction=bias_correction, keep_float=keep_float,
        )
        logits = predict_logits(converted, test_images, normalization)
        record("ours", {
            "name": name, "target": target, "method": method, "bias_correction": bias_correction, "keep_float": list(keep_float),
            **compare(logits, fp32_logits, labels),
            "calibration_s": round(timings["calibration_s"], 2), "load_average": load,
            "timings": {k: round(v, 3) for k, v in timings.items() if k.endswith("_s")},
        })

    targets = [t for t in args.targets.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    for target in targets:
        for method in methods:
            ours(f"resnet-deploy {target} {method} +bias-corr", target, method, True)
        ours(f"resnet-deploy {target} {args.default_method} no-bias-corr", target, args.default_method, False)
        ours(f"resnet-deploy {target} {args.default_method} +bias-corr keep-float conv1,fc", target, args.default_method, True, ("conv1", "fc"))

    if not args.skip_baselines:
        logits, seconds = torchao_x86_stock(loaded.model, calibration, normalization, test_images)
        record("baselines", {"name": "torchao PT2E X86InductorQuantizer (default config)", "scheme": "u8 asym act (histogram), s8 per-channel weights",
                             "target": "cpu",
                             **compare(logits, fp32_logits, labels), "calibration_s": round(seconds, 2)})
        with tempfile.TemporaryDirectory() as workdir:
            for per_channel, symmetric in ((False, False), (True, False), (True, True)):
                logits, seconds, ort_fp32 = onnxruntime_stock(loaded.model, calibration, normalization, test_images, Path(workdir), per_channel, symmetric)
                record("baselines", {
                    "name": f"onnxruntime quantize_static QDQ MinMax ({'per-channel' if per_channel else 'per-tensor, default'}"
                            f"{', symmetric s8 activations' if symmetric else ''})",
                    "scheme": f"{'s8 symmetric' if symmetric else 'u8 asym'} act, s8 {'per-channel' if per_channel else 'per-tensor'} weights",
                    "target": "tensorrt" if symmetric else "cpu",
                    **compare(logits, fp32_logits, labels), "calibration_s": round(seconds, 2),
                    "onnxruntime_fp32_top1": classification_metrics(ort_fp32, labels)["top1"],
                })

    if args.qat_epochs > 0:
        for target in targets[:1]:
            with tempfile.TemporaryDirectory() as workdir:
                tic = time.perf_counter()
                metrics = quantize_qat(loaded, dataset, Path(workdir) / "qat", target=target, method=args.default_method,
                                       calib_size=args.calib_size, epochs=args.qat_epochs, lr=args.qat_lr)
                # the saved artifact, evaluated like every other row
                logits = predict_logits(load_quantized(Path(workdir) / "qat").module, test_images, normalization)
                manifest = json.loads((Path(workdir) / "qat" / "manifest.json").read_text())
                row = {
                    "name": f"resnet-deploy {target} QAT {args.qat_epochs} epochs (lr {args.qat_lr})", "target": target, "method": args.default_method,
                    **compare(logits, fp32_logits, labels), "manifest_int8_top1": metrics["int8"]["top1"],
                    "qat_history": manifest["qat"]["history"], "wall_s": round(time.perf_counter() - tic, 1), "load_average": load_average(),
                }
                record("ours", row)

    if args.sensitivity:
        with tempfile.TemporaryDirectory() as workdir:
            report = sensitivity_analysis(loaded, dataset, Path(workdir) / "sensitivity.json", target=targets[0], method=args.default_method,
                                          calib_size=args.calib_size)
        results["sensitivity"] = {
            "target": targets[0], "method": args.default_method, "evaluated_on": report["evaluated_on"],
            "fp32_top1": report["fp32_top1"], "all_int8": report["all_int8"],
            "top_layers": [{k: row[k] for k in ("rank", "layer", "loss_top1", "agreement", "logit_mse")} for row in report["layers"][:6]],
            "plan": report["plan"],
        }

    summarize(results, args.default_method)
    write_json(output, results)
    atomic_write_text(output.with_suffix(".md"), markdown(results))
    print(f"wrote {output}")


def summarize(results: dict, default_method: str) -> None:
    """Best configuration per target, the margin over every stock flow, and the issue's targets."""
    ptq = [r for r in results["ours"] if "QAT" not in r["name"]]
    summary = {"best_per_target": {}, "versus_baselines": [], "targets": []}
    for target in sorted({r["target"] for r in ptq}):
        rows = [r for r in ptq if r["target"] == target]
        best = max(rows, key=lambda r: (r["top1"], -r["logit_mse"]))
        default = next((r for r in rows if r["method"] == default_method and r["bias_correction"] and not r["keep_float"]), best)
        summary["best_per_target"][target] = {"best": best["name"], "best_delta_top1": best["delta_top1"],
                                              "default": default["name"], "default_delta_top1": default["delta_top1"]}
        # like for like: the cpu target against the U8S8 stock flows, tensorrt against the symmetric one
        for baseline in (b for b in results["baselines"] if b.get("target") == target):
            summary["versus_baselines"].append({
                "ours": default["name"], "baseline": baseline["name"],
                "ours_delta_top1": round(default["delta_top1"], 3), "baseline_delta_top1": round(baseline["delta_top1"], 3),
                "margin_top1": round(default["delta_top1"] - baseline["delta_top1"], 3),
                "margin_logit_mse_ratio": round(baseline["logit_mse"] / max(default["logit_mse"], 1e-12), 2),
                "ours_logit_mse": default["logit_mse"], "baseline_logit_mse": baseline["logit_mse"],
                "ours_agreement": round(default["agreement_top1"], 2), "baseline_agreement": round(baseline["agreement_top1"], 2),
                "better": default["delta_top1"] > baseline["delta_top1"],
            })
        model = results["checkpoint"]["model"]["name"]
        goal = PTQ_GOAL.get(model, PTQ_GOAL_RESNET20)
        summary["targets"].append({"name": f"PTQ {target} ({default_method}) within {goal} points of FP32 ({model})",
                                   "measured": round(default["delta_top1"], 3), "met": default["delta_top1"] >= -goal})
    calibration = [r for r in ptq if r["method"] == default_method and r["bias_correction"] and not r["keep_float"]]
    if calibration and results["checkpoint"]["model"]["name"] == "resnet20":  # the goal is for ResNet20
        slowest = max(calibration, key=lambda r: r["calibration_s"])
        summary["targets"].append({"name": f"calibration of {results['dataset']['calibration_images']} images < {CALIBRATION_GOAL_S:.0f} s (ResNet20)",
                                   "measured": slowest["calibration_s"], "load_average": slowest["load_average"],
                                   "met": slowest["calibration_s"] < CALIBRATION_GOAL_S})
    for row in results["ours"]:
        if "QAT" in row["name"]:
            summary["targets"].append({"name": f"QAT within {QAT_GOAL} points of FP32 or above", "measured": round(row["delta_top1"], 3),
                                       "met": row["delta_top1"] >= -QAT_GOAL})
    results["summary"] = summary


def markdown(results: dict) -> str:
    lines = [f"# int8 accuracy, {results['checkpoint']['model']['name']} ({results['date']})", "",
             f"FP32 top-1 **{results['fp32']['top1']:.2f}%** on {results['dataset']['test_images']} test images "
             f"(checkpoint trained {results['checkpoint'].get('epochs_trained')} epochs); "
             f"calibration: {results['dataset']['calibration_images']} training images.", "",
             "delta: top-1 change against FP32 with its paired 95% interval (int8 fixes/breaks images FP32 got wrong/right).", "",
             "| flow | top-1 | delta | fixed/broken | agreement | logit MSE | calib s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["ours"] + results["baselines"]:
        ci = f" ± {row['delta_top1_ci95']:.2f}" if "delta_top1_ci95" in row else ""
        flips = f"{row['images_fixed']}/{row['images_broken']}" if "images_fixed" in row else ""
        lines.append(f"| {row['name']} | {row['top1']:.2f} | {row['delta_top1']:+.2f}{ci} | {flips} | {row['agreement_top1']:.2f} | "
                     f"{row.get('logit_mse', float('nan')):.5f} | {row.get('calibration_s', row.get('wall_s', ''))} |")
    summary = results.get("summary", {})
    if summary.get("versus_baselines"):
        lines += ["", "## Versus the stock flows", ""]
        for entry in summary["versus_baselines"]:
            lines.append(f"- {entry['ours']} vs {entry['baseline']}: {entry['margin_top1']:+.2f} points top-1, "
                         f"agreement {entry['ours_agreement']:.2f}% vs {entry['baseline_agreement']:.2f}%, "
                         f"logit MSE {entry['ours_logit_mse']:.5f} vs {entry['baseline_logit_mse']:.5f}")
    if summary.get("targets"):
        lines += ["", "## Targets", ""]
        for target in summary["targets"]:
            lines.append(f"- {'met' if target['met'] else 'MISSED'}: {target['name']} (measured {target['measured']})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
