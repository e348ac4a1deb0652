"""OpenVINO backend: the Runner contract, FP32 parity with PyTorch, int8 parity with ONNX Runtime and the
PyTorch int8 model on the export stage's own Q/DQ files (both schemes), options read back from the
compiled model, the missing-package message, and ``bench --backend openvino`` end to end.

The int8 files are made the way users make them: the shared synthetic-set ResNet20, ``quantize_ptq``
(128 calibration images) and ``export_checkpoint``. Every bound is checked against a negative control
(a bf16 run for the FP32 tolerance, a file with one weight tensor flipped for the int8 ones), so a
wrong backend fails them.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

openvino = pytest.importorskip("openvino")

from resnet_deploy.backends import (  # noqa: E402
    BackendUnavailable,
    OnnxRuntimeRunner,
    OpenVinoRunner,
    RunnerOptions,
    SkippedRunner,
)
from resnet_deploy.backends import openvino as ov_backend  # noqa: E402
from resnet_deploy.bench import build_runners  # noqa: E402
from resnet_deploy.checkpoint import load_checkpoint  # noqa: E402
from resnet_deploy.cli import main  # noqa: E402
from resnet_deploy.data import normalize, to_tensor_images  # noqa: E402
from resnet_deploy.errors import MissingDependencyError, UserError  # noqa: E402
from test_backends import check_contract  # noqa: E402

SCHEMES = ("cpu", "tensorrt")
# int8 engines round requantisations their own way; these bounds hold between two correct backends on
# one Q/DQ file and fail for a file with one weight tensor flipped (test_int8_bounds_catch_a_wrong_model).
INT8_MIN_AGREEMENT = 99.0  # % top-1, OpenVINO vs ONNX Runtime
INT8_MAX_DIFF_FRACTION = 0.1  # max |logit diff| over the largest |logit|
# % top-1 against the PyTorch int8 model (the export's own gate). Holds on the synthetic model here; on
# the shipped ResNet20 (calibration/r20-ptq-*, 1,000 seeded CIFAR-10 test images) OpenVINO 2026.4 reaches
# 99.5 % (cpu) / 99.0 % (tensorrt) where ONNX Runtime reaches 100 % / 99.9 %. Cause: when the CPU plugin
# fuses a residual Add into the convolution before it (sum post-op), it drops the rounding of that
# convolution's output FakeQuantize (the Q/DQ on the Add's conv input; it keeps the clip): intel_cpu
# conv.cpp, "drop rounding one special residual pattern". No compile property turns that off.
INT8_MIN_REFERENCE_AGREEMENT = 99.5


@pytest.fixture(scope="module")
def trained(synthetic_checkpoint, synthetic):
    return load_checkpoint(synthetic_checkpoint), synthetic, synthetic_checkpoint


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """FP32 + int8 exports of the trained model, one per int8 scheme: {scheme: export directory}."""
    from resnet_deploy.export import ExportOptions, export_checkpoint
    from resnet_deploy.quantize import quantize_ptq

    loaded, data, checkpoint = trained
    root = tmp_path_factory.mktemp("ov-exports")
    folders = {}
    for scheme in SCHEMES:
        quantize_ptq(loaded, data, root / f"int8-{scheme}", target=scheme, method="minmax", calib_size=128, evaluate=False)
        options = ExportOptions(checkpoint=checkpoint, output_dir=root, name=scheme, int8_dir=root / f"int8-{scheme}",
                                dataset=data, tensorrt=False, parity_images=256, threads=1)
        folders[scheme] = export_checkpoint(options).export_dir
    return folders


@pytest.fixture(scope="module")
def test_batch(trained) -> np.ndarray:
    loaded, data, _ = trained
    return normalize(to_tensor_images(data.test_images[:256]), loaded.normalization).numpy()


def infer(runner, batch: np.ndarray) -> np.ndarray:
    with runner:
        return runner.infer(batch)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100)


def int8_bounds_hold(logits: np.ndarray, reference: np.ndarray) -> bool:
    return (agreement(logits, reference) >= INT8_MIN_AGREEMENT
            and np.abs(logits - reference).max() <= INT8_MAX_DIFF_FRACTION * np.abs(reference).max())


def bf16_available() -> bool:
    return ov_backend.bf16_unavailable_reason() is None


# ---------------------------------------------------------------------------- FP32


def test_fp32_runner_contract(trained, exports):
    loaded, _, _ = trained
    runner = OpenVinoRunner(exports["cpu"] / "model-fp32.onnx", threads=1)
    assert (runner.backend, runner.name, runner.device) == ("openvino", "openvino-fp32", "cpu")
    check_contract(runner, loaded.model, atol=1e-4)


def test_fp32_matches_pytorch_on_test_images(trained, exports, test_batch):
    loaded, _, _ = trained
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(test_batch)).numpy()
    runner = OpenVinoRunner(exports["cpu"] / "model-fp32.onnx", threads=1)
    logits = infer(runner, test_batch)
    assert np.abs(logits - expected).max() < 1e-4 and agreement(logits, expected) == 100.0
    assert runner.describe()["inference_precision"] == "f32"
    if bf16_available():
        # The CPU plugin's default precision here is bf16; asked for it, the same tolerance fails:
        # the FP32 check above can tell f32 from bf16 inference.
        bf16 = infer(OpenVinoRunner(exports["cpu"] / "model-fp32.onnx", precision="bf16", threads=1), test_batch)
        assert np.abs(bf16 - expected).max() > 1e-3


def test_bf16_runs_bf16_where_the_cpu_has_it(trained, exports, test_batch):
    loaded, _, _ = trained
    runner = OpenVinoRunner(exports["cpu"] / "model-fp32.onnx", precision="bf16", threads=1)
    if not bf16_available():
        with pytest.raises(BackendUnavailable, match="BF16"):
            runner.activate()
        return
    logits = infer(runner, test_batch)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(test_batch)).numpy()
    settings = runner.describe()
    assert settings["inference_precision"] == "bf16" and settings["convolution_precisions"] == {"bf16": 19}
    assert agreement(logits, expected) >= 99.0


# ---------------------------------------------------------------------------- int8


@pytest.mark.parametrize("scheme", SCHEMES)
def test_int8_agrees_with_onnxruntime_on_the_same_file(exports, test_batch, scheme):
    path = exports[scheme] / f"model-int8-{scheme}.onnx"
    runner = OpenVinoRunner(path, precision="int8", threads=1)
    logits = infer(runner, test_batch)
    reference = infer(OnnxRuntimeRunner(path, precision="int8", threads=1), test_batch)
    assert int8_bounds_hold(logits, reference), (agreement(logits, reference), np.abs(logits - reference).max())
    settings = runner.describe()
    assert settings["int8_convolutions"] == settings["convolutions"] == 19, settings["convolution_precisions"]
    label = {"cpu": "u8s8", "tensorrt": "s8s8"}[scheme]
    assert runner.name == f"openvino-int8-{label}" and settings["quantization"]["label"].lower() == label


@pytest.mark.parametrize("scheme", SCHEMES)
def test_int8_agrees_with_the_pytorch_int8_model(trained, exports, test_batch, scheme):
    """The export's gate for ONNX Runtime, applied to OpenVINO: >= 99.5 % top-1 agreement with the
    quantize artifact's model evaluated exactly."""
    from resnet_deploy.export.parity import ExactQDQReference
    from resnet_deploy.quantize import load_quantized

    quantized = load_quantized(exports[scheme].parent / f"int8-{scheme}")
    with torch.no_grad():
        reference = ExactQDQReference(quantized.module)(torch.from_numpy(test_batch)).numpy()
    logits = infer(OpenVinoRunner(exports[scheme] / f"model-int8-{scheme}.onnx", precision="int8", threads=1), test_batch)
    assert agreement(logits, reference) >= INT8_MIN_REFERENCE_AGREEMENT


def test_openvino_ir_file_runs_like_its_onnx(exports, test_batch, tmp_path):
    """An OpenVINO IR (.xml + .bin, what NNCF writes) runs through the same runner: same logits as the
    ONNX it was saved from, int8 convolutions read back, no Q/DQ scheme to read from it."""
    path = exports["cpu"] / "model-int8-cpu.onnx"
    ir = tmp_path / "model-int8-cpu.xml"
    openvino.save_model(openvino.Core().read_model(str(path)), str(ir), compress_to_fp16=False)
    runner = OpenVinoRunner(ir, precision="int8", name="openvino-int8-ir", threads=1)
    np.testing.assert_array_equal(infer(runner, test_batch), infer(OpenVinoRunner(path, precision="int8", threads=1), test_batch))
    settings = runner.describe()
    assert settings["int8_convolutions"] == settings["convolutions"] == 19 and "quantization" not in settings


def test_int8_bounds_catch_a_wrong_model(exports, test_batch, tmp_path):
    """Negative control: one int8 weight tensor with its sign flipped, run by OpenVINO, misses the bounds
    against ONNX Runtime on the original file."""
    path = exports["cpu"] / "model-int8-cpu.onnx"
    model = onnx.load(str(path))
    weights = sorted((i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4), key=lambda i: i.name)
    target = weights[len(weights) // 2]
    target.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(target), target.name))
    broken = tmp_path / "flipped.onnx"
    onnx.save(model, str(broken))
    reference = infer(OnnxRuntimeRunner(path, precision="int8", threads=1), test_batch)
    assert not int8_bounds_hold(infer(OpenVinoRunner(broken, precision="int8", threads=1), test_batch), reference)


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize("threads, hint", [(1, "latency"), (2, "throughput")])
def test_threads_and_hint_reach_the_compiled_model(exports, test_batch, threads, hint):
    runner = OpenVinoRunner(exports["cpu"] / "model-int8-cpu.onnx", precision="int8", threads=threads, hint=hint)
    with runner:
        compiled = runner._compiled
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
        assert str(compiled.get_property("PERFORMANCE_HINT")).endswith(hint.upper())
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        settings = runner.describe()
        streams = int(compiled.get_property("NUM_STREAMS"))
        logits = runner.infer(test_batch[:7])
    assert settings["inference_num_threads"] == threads and settings["num_streams"] == streams
    assert settings["infer_requests"] == (1 if hint == "latency" else int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    assert settings["performance_hint"] == hint.upper() and f"{threads} threads" in settings["execution"]
    # A batch split across the throughput streams gives each image the logits it gets alone.
    alone = infer(OpenVinoRunner(exports["cpu"] / "model-int8-cpu.onnx", precision="int8", threads=1), test_batch[:7])
    np.testing.assert_allclose(logits, alone, atol=1e-5, rtol=0)


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="not found"):
        OpenVinoRunner(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="cannot read"):
        OpenVinoRunner(broken).activate()
    with pytest.raises(UserError, match="--ov-hint"):
        OpenVinoRunner(broken, hint="fastest")
    with pytest.raises(UserError, match="fp16"):
        OpenVinoRunner(broken, precision="fp16")
    with pytest.raises(UserError, match="--ov-hint"):
        RunnerOptions(ov_hint="fastest").validate()


# ---------------------------------------------------------------------------- build_runners and missing package


def manifests(exports) -> list[tuple]:
    from resnet_deploy.export import load_manifest

    return [(exports[s], load_manifest(exports[s])) for s in SCHEMES]


def test_build_runners_rows(trained, exports):
    loaded, _, _ = trained
    rows = build_runners(loaded.model, RunnerOptions(backends=["openvino"], threads=1), exports=manifests(exports))
    assert [r.name for r in rows] == ["pytorch-fp32", "openvino-fp32", "openvino-int8-u8s8", "openvino-int8-s8s8"]
    asked = build_runners(loaded.model, RunnerOptions(backends=["openvino"], precisions=["fp32", "bf16"], threads=1), exports=manifests(exports))
    assert [r.name for r in asked] == ["pytorch-fp32", "openvino-fp32", "openvino-bf16"]  # bf16 only when named
    only_int8 = build_runners(loaded.model, RunnerOptions(backends=["openvino"], precisions=["int8"], ov_hint="throughput", threads=1),
                              exports=manifests(exports))
    assert [r.name for r in only_int8] == ["pytorch-fp32", "openvino-int8-u8s8-throughput", "openvino-int8-s8s8-throughput"]
    skipped = build_runners(loaded.model, RunnerOptions(backends=["openvino"]))
    assert isinstance(skipped[1], SkippedRunner) and "no export directory" in skipped[1].reason


def test_missing_openvino_is_named_with_the_install_line(trained, exports, monkeypatch, tmp_path):
    import resnet_deploy.bench.runners as bench_runners

    loaded, _, checkpoint = trained
    monkeypatch.setattr(bench_runners, "openvino_installed", lambda: False)
    with pytest.raises(MissingDependencyError, match="pip install openvino"):
        build_runners(loaded.model, RunnerOptions(backends=["openvino"]), exports=manifests(exports))
    everything = build_runners(loaded.model, RunnerOptions(), exports=manifests(exports))
    skipped = {r.name: r.reason for r in everything if isinstance(r, SkippedRunner)}
    assert "pip install openvino" in skipped["openvino"]
    result = CliRunner().invoke(main, ["-q", "bench", "--export", str(exports["cpu"]), "--dataset", "synthetic",
                                       "--backend", "openvino", "--output-root", str(tmp_path)])
    assert result.exit_code == 2 and "pip install openvino" in result.output
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # the import itself fails the same way
    with pytest.raises(MissingDependencyError, match="pip install openvino"):
        OpenVinoRunner(exports["cpu"] / "model-fp32.onnx").activate()


# ---------------------------------------------------------------------------- CLI


def test_bench_cli_runs_openvino_end_to_end(exports, tmp_path):
    import jsonschema

    from resnet_deploy.report import RESULTS_SCHEMA

    result = CliRunner().invoke(
        main,
        ["-q", "bench", "--export", str(exports["cpu"]), "--export", str(exports["tensorrt"]), "--dataset", "synthetic",
         "--backend", "openvino", "--precision", "fp32,int8", "--ov-hint", "throughput", "--batch-sizes", "1,4",
         "--min-time", "0", "--max-time", "0.2", "--min-iterations", "2", "--warmup", "1", "--threads", "2",
         "--name", "ov", "--output-root", str(tmp_path), "--verify"],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "ov" / "results.json").read_text())
    jsonschema.validate(results, RESULTS_SCHEMA)
    rows = {row["name"]: row for row in results["rows"]}
    assert set(rows) == {"pytorch-fp32", "openvino-fp32-throughput", "openvino-int8-u8s8-throughput", "openvino-int8-s8s8-throughput"}
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["reason"])
        assert [e["batch_size"] for e in row["latency"] if e["status"] == "ok"] == [1, 4]
    assert rows["openvino-fp32-throughput"]["accuracy"]["agreement"] == 100.0
    settings = rows["openvino-int8-u8s8-throughput"]["settings"]
    assert settings["performance_hint"] == "THROUGHPUT" and settings["inference_num_threads"] == 2 and settings["int8_convolutions"] == 19
    assert results["verification"]["passed"] and results["software"]["openvino"] == openvino.get_version()
    assert "OpenVINO" in (tmp_path / "ov" / "report.md").read_text()
