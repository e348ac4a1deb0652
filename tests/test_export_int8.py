"""int8 export: Q/DQ form for TensorRT and for ONNX Runtime, parity with the PyTorch int8 model on
held-out images, and checks that fail when the graph or the weights are wrong.

Uses the session's briefly trained ResNet20 (3 epochs on the small CIFAR-10 subset) and its PTQ
artifacts (conftest.ptq_resnet20: the quantize stage's public API, 500 calibration images from the
training split); parity runs on the subset's 1,000 test images, which neither training nor
calibration saw.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from resnet_deploy.cli import main
from resnet_deploy.errors import UserError
from resnet_deploy.export import ExportOptions, check_parity, export_checkpoint
from resnet_deploy.export import tensorrt as trt_lib
from resnet_deploy.tensorrt import runtime as trt_runtime
from resnet_deploy.export.parity import ParityInputs
from resnet_deploy.export.qdq import analyse_qdq, graph_constants, ort_int8_kernels, qdq_problems_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_artifacts(ptq_resnet20):
    """The folder holding the session's PTQ artifact per target (``tensorrt/``, ``cpu/``); read-only."""
    return ptq_resnet20["tensorrt"][0].parent


class _FailedExport:
    """What a VerificationError left behind: the manifest (written before raising) and the message."""

    def __init__(self, export_dir, error) -> None:
        self.export_dir = export_dir
        self.manifest_path = export_dir / "manifest.json"
        self.manifest = json.loads(self.manifest_path.read_text())
        self.error = str(error)


@pytest.fixture(scope="module")
def int8_exports(int8_artifacts, trained_resnet20, cifar10_small, tmp_path_factory):
    """Both schemes exported through the library entry point (engines for sm86 with TensorRT-RTX when installed)."""
    from resnet_deploy.errors import VerificationError

    out = tmp_path_factory.mktemp("exports")
    reports = {}
    available, _ = trt_lib.tensorrt_available()
    mp = pytest.MonkeyPatch()
    mp.setattr(trt_runtime, "current_gpu", lambda: None)
    try:
        for target in ("tensorrt", "cpu"):
            options = ExportOptions(
                checkpoint=trained_resnet20, output_dir=out, name=target, int8_dir=int8_artifacts / target,
                dataset=cifar10_small, tensorrt=available, compute_capability="8.6" if available else None,
            )
            try:
                reports[target] = export_checkpoint(options)
            except VerificationError as exc:  # parity tests below judge it; structure tests still run
                reports[target] = _FailedExport(out / target, exc)
    finally:
        mp.undo()
    return reports


def _int8(report) -> dict:
    return next(a for a in report.manifest["artifacts"] if a["kind"] == "onnx" and a["precision"] == "int8")


def test_tensorrt_scheme_is_symmetric_int8_qdq(int8_exports):
    artifact = _int8(int8_exports["tensorrt"])
    assert artifact["scheme"] == "tensorrt" and artifact["path"] == "model-int8-tensorrt.onnx"
    qdq = artifact["qdq"]
    assert qdq["quantized_convolutions"] == qdq["convolutions"] == 19
    assert set(qdq["activation_qdq_by_dtype"]) == {"QuantizeLinear:int8", "DequantizeLinear:int8"}
    assert qdq["activation_nonzero_zero_points"] == 0 and qdq["int32_bias_dequantize"] == 0
    assert qdq["weights"]["per_channel_axis0"] == 20  # 19 convolutions + the classifier
    assert qdq["weights"]["per_tensor"] == qdq["weights"]["nonzero_zero_point"] == 0
    # and independently of our analysis: every Q/DQ zero-point in the file is an int8 zero
    path = int8_exports["tensorrt"].export_dir / artifact["path"]
    model = onnx.load(str(path))
    zero_points = {n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"})
    assert all(values[z].dtype == np.int8 and not values[z].any() for z in zero_points)


def test_int8_parity_on_held_out_images(int8_exports):
    """>= 99.5 % top-1 agreement between ONNX Runtime and the PyTorch int8 model on the 1,000 held-out
    images, for both schemes: quantize puts every bias on the int32 grid, so both run one model."""
    for target in ("tensorrt", "cpu"):
        report = int8_exports[target]
        artifact = _int8(report)
        assert not isinstance(report, _FailedExport), report.error
        assert artifact["qdq"]["conv_bias_off_int32_grid"] == 0
        parity = artifact["parity"]
        assert parity["reference"].startswith("pytorch-int8-qdq") and parity["count"] == 1000
        assert "held-out" in parity["inputs"]
        assert parity["reference_top1"] > 30  # a model that learned something, so agreement means something
        emulation = parity["compared_with"]["pytorch-int8-qdq float32 emulation"]
        assert emulation["reference_top1_agreement"] >= 99.0  # float32 emulation noise is small but real
        assert parity["passed"] and parity["top1_agreement"] >= 99.5 and not parity["failures"], parity


def test_exact_reference_is_batch_independent(int8_artifacts, cifar10_small):
    """Integer-exact evaluation gives bit-identical logits for an image whatever batch it runs in
    (a float32 emulation does not promise that): the property that makes it a reference."""
    import torch

    from resnet_deploy.export.parity import ExactQDQReference
    from resnet_deploy.quantize import load_quantized

    quantized = load_quantized(int8_artifacts / "tensorrt")
    inputs = ParityInputs(cifar10_small.test_images[:24], quantized.normalization, "test")
    exact = ExactQDQReference(quantized.module)
    together = exact(inputs.tensor())
    alone = torch.cat([exact(inputs.tensor(i, i + 1)) for i in range(0, 24, 5)])
    assert torch.equal(together[::5], alone)
    with torch.no_grad():
        emulated = quantized.module(inputs.tensor())
    assert (together - emulated).abs().max() < 0.5 and (together.argmax(1) == emulated.argmax(1)).float().mean() > 0.9


def test_bias_grid_diagnostic(int8_exports, tmp_path):
    """The export's diagnostic counts biases moved off x_scale * w_scale (what an artifact made by
    another tool, or before quantize snapped biases, looks like) and nothing once they are back on it."""
    path = int8_exports["tensorrt"].export_dir / _int8(int8_exports["tensorrt"])["path"]
    model = onnx.load(str(path))
    assert analyse_qdq(model)["conv_bias_off_int32_grid"] == 0
    initializers = {i.name: i for i in model.graph.initializer}
    constants = graph_constants(model)  # initializers and Constant nodes as arrays (the scales)
    producers = {o: n for n in model.graph.node for o in n.output}
    moved = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in initializers:
            x_dq, w_dq = producers[node.input[0]], producers[node.input[1]]
            step = np.float64(constants[x_dq.input[1]]) * constants[w_dq.input[1]].astype(np.float64)
            bias = constants[node.input[2]].astype(np.float64)
            initializers[node.input[2]].CopyFrom(numpy_helper.from_array((bias + 0.3 * step).astype(np.float32), node.input[2]))
            moved += 1
    assert moved > 0 and analyse_qdq(model)["conv_bias_off_int32_grid"] == moved


def test_cpu_scheme_runs_int8_kernels_in_onnx_runtime(int8_exports):
    artifact = _int8(int8_exports["cpu"])
    assert set(artifact["qdq"]["activation_qdq_by_dtype"]) == {"QuantizeLinear:uint8", "DequantizeLinear:uint8"}
    kernels = artifact["onnxruntime_kernels"]
    assert kernels["qlinear_conv"] == 19 and kernels["float_conv"] == 0
    # The classifier runs as one int8 QGemm (its bias is DequantizeLinear(int32)), not DQ + float Gemm.
    assert kernels["qgemm"] == 1 and kernels["float_gemm"] == 0 and artifact["qdq"]["int32_bias_dequantize"] == 1
    assert kernels == ort_int8_kernels(int8_exports["cpu"].export_dir / artifact["path"])
    assert _int8(int8_exports["tensorrt"])["qdq"]["int32_bias_dequantize"] == 0  # TensorRT's parser rejects them


@pytest.mark.tensorrt
def test_int8_engines(int8_exports):
    """The TensorRT-scheme int8 ONNX passes parity (test_int8_parity_on_held_out_images requires it), so
    both engines are built; the cpu-scheme int8 ONNX gets none (TensorRT rejects it), with the reason.
    The other branch, no engine from an ONNX file that failed parity, is
    tests/test_tensorrt.py::test_no_engine_from_an_onnx_file_that_failed_parity."""
    manifest = int8_exports["tensorrt"].manifest
    engines = {a["precision"]: a for a in manifest["artifacts"] if a["kind"] == "tensorrt"}
    assert _int8(int8_exports["tensorrt"])["parity"]["passed"], _int8(int8_exports["tensorrt"])["parity"]
    assert set(engines) == {"fp32", "int8"}
    assert engines["int8"]["layer_precision"]["quantized_convolutions"] == 19
    assert engines["int8"]["onnx"] == "model-int8-tensorrt.onnx"
    skipped = int8_exports["cpu"].manifest["skipped"]
    assert any(s["precision"] == "int8" and "rejects" in s["reason"] for s in skipped)


def test_int8_parity_fails_on_perturbed_weights(int8_exports, int8_artifacts, cifar10_small, tmp_path):
    """Flip the sign of one int8 weight tensor in the ONNX file: agreement with the int8 model must collapse."""
    from resnet_deploy.quantize import load_quantized

    report = int8_exports["tensorrt"]
    path = report.export_dir / _int8(report)["path"]
    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    weights.sort(key=lambda i: i.name)
    target = weights[len(weights) // 2]
    target.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(target), target.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, str(bad))
    quantized = load_quantized(int8_artifacts / "tensorrt")
    inputs = ParityInputs(cifar10_small.test_images[:500], quantized.normalization, "test", cifar10_small.test_labels[:500])
    parity = check_parity(bad, quantized.module, inputs, "int8")
    assert not parity["passed"] and parity["failures"][0].startswith("top1_agreement")


def test_qdq_checks_catch_what_tensorrt_rejects(int8_exports):
    cpu_analysis = _int8(int8_exports["cpu"])["qdq"]
    problems = qdq_problems_of(cpu_analysis, "tensorrt")
    assert any("int8 activations" in p for p in problems) and any("non-zero zero-points" in p for p in problems)
    assert qdq_problems_of(cpu_analysis, "cpu") == []
    path = int8_exports["tensorrt"].export_dir / _int8(int8_exports["tensorrt"])["path"]
    model = onnx.load(str(path))
    bias = numpy_helper.from_array(np.zeros(16, np.int32), "bias_q")
    scale = numpy_helper.from_array(np.ones(16, np.float32), "bias_scale")
    model.graph.initializer.extend([bias, scale])
    model.graph.node.append(onnx.helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias_f"]))
    analysis = analyse_qdq(model)
    assert analysis["int32_bias_dequantize"] == 1
    assert any("int32 bias" in p for p in qdq_problems_of(analysis, "tensorrt"))


def test_int8_needs_held_out_data_and_matching_checkpoint(int8_artifacts, trained_resnet20, synthetic_checkpoint, tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        export_checkpoint(ExportOptions(checkpoint=trained_resnet20, output_dir=tmp_path, int8_dir=int8_artifacts / "tensorrt", tensorrt=False))
    result = CliRunner().invoke(main, ["export", str(synthetic_checkpoint), "--int8", str(int8_artifacts / "tensorrt"),
                                       "--dataset", "synthetic", "--no-tensorrt", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "different checkpoint" in result.output


def test_manifest_records_quantization(int8_exports):
    manifest = json.loads(int8_exports["tensorrt"].manifest_path.read_text())
    assert manifest["quantization"]["target"] == "tensorrt"
    assert manifest["quantization"]["checkpoint_sha256"] == manifest["checkpoint"]["sha256"]
