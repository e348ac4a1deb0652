#!/usr/bin/env python
"""Does OpenVINO compute resnet-deploy's int8 model exactly? Top-1 agreement of OpenVINO and ONNX Runtime
with the exact integer evaluation of the PyTorch int8 model, per scheme and residual placement (issue #14).

    python benchmarks/openvino_exactness.py --data-dir ../shared/datasets/cifar10-jpeg.tar.xz

For each target (``cpu``, ``tensorrt``) and each ``--residual-conv-input`` (``int8``, the default, and
``float``) it quantizes the checkpoint (PTQ, default method and calibration), exports the int8 Q/DQ
ONNX file as the export stage does, and runs a seeded subset of ``--images`` test images (the bench's subset) through the exact
PyTorch reference (``ExactQDQReference``), OpenVINO's CPU plugin and ONNX Runtime. OpenVINO's CPU
plugin skips the rounding of a convolution's output quantizer when it fuses the residual Add into that
convolution; with ``float`` there is no such quantizer. Each row also records how many convolutions ONNX
Runtime runs as int8 kernels (the price of ``float`` there) and what OpenVINO reports as int8.

Writes benchmarks/results/cpu-<date>/openvino_exactness.json (after each row).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnet_deploy.backends import OnnxRuntimeRunner, OpenVinoRunner  # noqa: E402
from resnet_deploy.checkpoint import checkpoint_argument, load_checkpoint  # noqa: E402
from resnet_deploy.data import load_dataset, normalized_batches  # noqa: E402
from resnet_deploy.environment import environment_info  # noqa: E402
from resnet_deploy.export.onnx_export import ExportInfo, export_onnx  # noqa: E402
from resnet_deploy.export.parity import ExactQDQReference  # noqa: E402
from resnet_deploy.export.qdq import analyse_qdq, ort_int8_kernels  # noqa: E402
from resnet_deploy.fileio import write_json  # noqa: E402
from resnet_deploy.quantize import load_quantized, quantize_ptq  # noqa: E402
from resnet_deploy.quantize_choices import RESIDUAL_CONV_INPUTS, TARGETS  # noqa: E402

BATCH = 250


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100)


def run_runner(runner, batches: list[torch.Tensor]) -> tuple[np.ndarray, dict]:
    with runner:
        return np.concatenate([runner.infer(batch.numpy()) for batch in batches]), runner.describe()


def int8_onnx(loaded, dataset, workdir: Path, target: str, residual: str) -> tuple[Path, Path, dict]:
    """PTQ with ``residual`` placement, then the int8 Q/DQ ONNX file; returns (artifact, onnx, Q/DQ counts)."""
    import onnx

    artifact = workdir / f"{target}-{residual}"
    quantize_ptq(loaded, dataset, artifact, target=target, residual_conv_input=residual, evaluate=False)
    quantized = load_quantized(artifact)
    info = ExportInfo(quantized.spec.to_dict(), quantized.normalization.to_dict(), list(quantized.classes),
                      loaded.sha256, "int8", quantized.target)
    path = workdir / f"model-int8-{target}-{residual}.onnx"
    export_onnx(quantized.module, path, info, dynamic_batch=True, static_batch=None)
    analysis = analyse_qdq(onnx.load(str(path)))
    kernels = ort_int8_kernels(path)
    counts = {"quantized_convolutions": analysis["quantized_convolutions"],
              "quantized_convolutions_float_output": analysis["quantized_convolutions_float_output"],
              "ort_qlinear_conv": kernels["qlinear_conv"], "ort_float_conv": kernels["float_conv"]}
    return artifact, path, counts


def measure(loaded, dataset, batches, labels, workdir: Path, target: str, residual: str) -> dict:
    tic = time.perf_counter()
    artifact, path, counts = int8_onnx(loaded, dataset, workdir, target, residual)
    reference_model = ExactQDQReference(load_quantized(artifact).module)
    with torch.no_grad():
        reference = torch.cat([reference_model(batch) for batch in batches]).numpy()
    openvino, described = run_runner(OpenVinoRunner(path, precision="int8", threads=2), batches)
    onnxruntime, _ = run_runner(OnnxRuntimeRunner(path, precision="int8", threads=2), batches)
    top1 = lambda logits: float((logits.argmax(1) == labels).mean() * 100)  # noqa: E731
    return {
        "target": target, "residual_conv_input": residual,
        "openvino_vs_pytorch_int8": agreement(openvino, reference),
        "onnxruntime_vs_pytorch_int8": agreement(onnxruntime, reference),
        "openvino_vs_onnxruntime": agreement(openvino, onnxruntime),
        "openvino_max_abs_logit_diff": float(np.abs(openvino - reference).max()),
        "top1": {"pytorch_int8": top1(reference), "openvino": top1(openvino), "onnxruntime": top1(onnxruntime)},
        "openvino_execution": described.get("execution"),  # its int8 convolutions, read back from the compiled model
        **counts, "seconds": round(time.perf_counter() - tic, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="pretrained:resnet20", type=checkpoint_argument,
                        help="FP32 checkpoint, a file or pretrained:NAME (default pretrained:resnet20)")
    parser.add_argument("--data-dir", required=True, help="the CIFAR-10 archive or folder")
    parser.add_argument("--images", type=int, default=1000, help="test images compared (a seeded subset, as bench --subset takes)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"cpu-{datetime.date.today()}")
    args = parser.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    dataset = load_dataset("cifar10", args.data_dir)
    subset = dataset.subset(None, args.images)
    batches = list(normalized_batches(subset.test_images, loaded.normalization, BATCH))
    results = {"checkpoint": str(args.checkpoint), "images": len(subset.test_labels), "rows": [],
               "environment": environment_info()}
    out = args.out / "openvino_exactness.json"
    with tempfile.TemporaryDirectory() as workdir:
        for target in TARGETS:
            for residual in RESIDUAL_CONV_INPUTS:
                row = measure(loaded, dataset, batches, np.asarray(subset.test_labels), Path(workdir), target, residual)
                results["rows"].append(row)
                write_json(out, results)
                print(f"{target}/{residual}: OpenVINO agrees with PyTorch int8 on {row['openvino_vs_pytorch_int8']:.1f}%, "
                      f"ONNX Runtime {row['onnxruntime_vs_pytorch_int8']:.1f}% ({row['ort_qlinear_conv']} ORT int8 convs)", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
