"""Runner contract for each backend that can run on the CPU, int8 scheme detection, and what the
TensorRT runner says on a machine without a GPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_deploy.backends import (
    BackendUnavailable,
    OnnxRuntimeRunner,
    PyTorchRunner,
    RunnerOptions,
    SkippedRunner,
    TensorRTRunner,
    cuda_unavailable_reason,
    fp32_runner,
    onnx_quantization_scheme,
    physical_cores,
)
from resnet_deploy.backends.base import NonFiniteOutputError, check_finite
from resnet_deploy.bench import build_runners
from resnet_deploy.errors import UserError
from resnet_deploy.models import create_model


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """FP32 ONNX with a dynamic batch, the way the export stage makes it (dynamo exporter)."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, input_names=["input"],
            output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False,
        )
    return path


def quantize_with_ort(fp32_path: Path, out_path: Path, activations: str) -> Path:
    """ONNX Runtime's own static int8 quantization (QDQ), U8S8 or S8S8, calibrated on noise."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((8, 3, 32, 32), dtype=np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8, per_channel=True,
    )
    return out_path


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("resnet20")
    # Non-trivial BN statistics so outputs differ per input and per class.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def onnx_files(model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, folder / "model.fp32.onnx")
    return {
        "fp32": fp32,
        "u8s8": quantize_with_ort(fp32, folder / "model.int8.u8s8.onnx", "u8"),
        "s8s8": quantize_with_ort(fp32, folder / "model.int8.s8s8.onnx", "s8"),
    }


def batch_of(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((size, 3, 32, 32), dtype=np.float32)


def check_contract(runner, reference: torch.nn.Module, atol: float) -> None:
    """What every runner promises: lifecycle, input kinds, output type/shape, parity with FP32."""
    for attribute in ("name", "backend", "precision", "device", "input_name"):
        assert isinstance(getattr(runner, attribute), str) and getattr(runner, attribute)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(batch_of(2))
    with runner:
        assert runner.is_active
        runner.activate()  # idempotent
        for size in (1, 3):
            x = batch_of(size, seed=size)
            expected = reference(torch.from_numpy(x)).detach().numpy()
            from_numpy = runner.infer(x)
            from_torch = runner.infer(torch.from_numpy(x))
            assert from_numpy.dtype == np.float32 and from_numpy.shape == (size, 10)
            np.testing.assert_allclose(from_numpy, expected, atol=atol, rtol=0)
            np.testing.assert_array_equal(from_numpy, from_torch)
        staged = runner.prepare(batch_of(2))
        assert runner.to_host(runner.run_prepared(staged)).shape == (2, 10)
        with pytest.raises(UserError, match="NCHW"):
            runner.infer(np.zeros((2, 32, 32, 3), dtype=np.float32))
        assert isinstance(runner.describe(), dict)
    assert not runner.is_active
    runner.deactivate()  # idempotent


def test_pytorch_fp32_runner_contract(model):
    runner = fp32_runner(model, threads=1)
    assert (runner.backend, runner.precision, runner.device, runner.name) == ("pytorch", "fp32", "cpu", "pytorch-fp32")
    before = torch.get_num_threads()
    check_contract(runner, model, atol=0)
    assert torch.get_num_threads() == before, "the runner must restore torch's thread count"
    assert runner.describe()["torch_threads"] == 1


def test_pytorch_channels_last_matches(model):
    check_contract(PyTorchRunner(model, channels_last=True, threads=1), model, atol=1e-4)


def test_pytorch_fp16_needs_a_gpu(model):
    with pytest.raises(BackendUnavailable, match="CUDA"):
        PyTorchRunner(model, precision="fp16", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_pytorch_cuda_without_gpu_is_unavailable(model):
    runner = PyTorchRunner(model, device="cuda:0")
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        runner.activate()


def _tf32_flags() -> tuple[bool, bool]:
    return bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32)


def test_pytorch_fp32_gpu_runner_pins_tf32_off_and_restores_it(monkeypatch):
    """torch leaves cuDNN TF32 on, which would make the FP32 GPU baseline a TF32 one: the runner turns
    both TF32 flags off while active and puts back what it found, also when activation fails. The
    flags are process-global, so this runs on the CPU: CUDA is reported available and the "model" is a
    plain callable that nothing moves to a device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    found = _tf32_flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        runner = PyTorchRunner(lambda x: x, device="cuda:0", threads=1)
        with runner:
            assert _tf32_flags() == (False, False)
        assert _tf32_flags() == (True, True)

        def broken_loader():
            raise RuntimeError("loading failed")

        with pytest.raises(RuntimeError, match="loading failed"):
            PyTorchRunner(loader=broken_loader, device="cuda:0", threads=1).activate()
        assert _tf32_flags() == (True, True)

        class TF32Runner(PyTorchRunner):  # a row that means TF32 (benchmarks/gpu_suite.py's pytorch-tf32)
            tf32 = True

        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with TF32Runner(lambda x: x, name="pytorch-tf32", device="cuda:0", threads=1):
            assert _tf32_flags() == (True, True)
        assert _tf32_flags() == (False, False)

        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        for other in (PyTorchRunner(lambda x: x, precision="fp16", device="cuda:0", threads=1), PyTorchRunner(lambda x: x, threads=1)):
            with other:  # autocast rows and CPU rows leave the flags alone
                assert _tf32_flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = found


def test_onnxruntime_fp32_runner_contract(model, onnx_files):
    runner = OnnxRuntimeRunner(onnx_files["fp32"], threads=1)
    assert (runner.backend, runner.name) == ("onnxruntime", "onnxruntime-fp32")
    check_contract(runner, model, atol=1e-4)
    with runner:
        info = runner.describe()
    assert info["intra_op_threads"] == 1
    assert info["graph_optimization"] == "all"
    assert info["execution_provider"] == "CPUExecutionProvider"


def test_onnxruntime_int8_rows_name_their_scheme(model, onnx_files):
    u8 = OnnxRuntimeRunner(onnx_files["u8s8"], precision="int8", threads=1)
    s8 = OnnxRuntimeRunner(onnx_files["s8s8"], precision="int8", threads=1)
    assert u8.name == "onnxruntime-int8-u8s8" and s8.name == "onnxruntime-int8-s8s8"
    x = batch_of(16)
    expected = model(torch.from_numpy(x)).detach().numpy()
    for runner in (u8, s8):
        with runner:
            logits = runner.infer(x)
        # int8 is close to FP32 but not equal: a real quantized graph ran.
        error = np.abs(logits - expected).max()
        assert 0 < error < 0.5 * np.abs(expected).max()


def test_onnx_quantization_scheme_reads_the_graph(onnx_files):
    assert onnx_quantization_scheme(onnx_files["fp32"]) is None
    u8 = onnx_quantization_scheme(onnx_files["u8s8"])
    s8 = onnx_quantization_scheme(onnx_files["s8s8"])
    assert (u8["label"], u8["activations"], u8["weights"], u8["format"]) == ("U8S8", "uint8", "int8", "QDQ")
    assert (s8["label"], s8["activations"], s8["weights"]) == ("S8S8", "int8", "int8")


def test_onnxruntime_missing_provider_is_reported(onnx_files):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    runner = OnnxRuntimeRunner(onnx_files["fp32"], provider="cuda")
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider") as info:
        runner.activate()
    assert "onnxruntime-gpu" in str(info.value)


def test_onnxruntime_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="not found"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="cannot load"):
        OnnxRuntimeRunner(broken).activate()
    with pytest.raises(UserError, match="--ort-provider"):
        OnnxRuntimeRunner(broken, provider="directml")


def test_check_finite_names_runner_and_batch():
    check_finite(np.ones((2, 10), dtype=np.float32), "r", "batch 0")
    bad = np.ones((2, 10), dtype=np.float32)
    bad[1, 3] = np.nan
    bad[0, 0] = np.inf
    with pytest.raises(NonFiniteOutputError, match=r"my-runner produced NaN and inf in 2 of 20 logits \(batch 7\)"):
        check_finite(bad, "my-runner", "batch 7")


def test_physical_cores_is_positive():
    assert 1 <= physical_cores() <= (torch.get_num_threads() + 256)


# ---------------------------------------------------------------------------- build_runners


def manifest_for(onnx_files: dict[str, Path], folder: Path, engines: bool = False) -> dict:
    from resnet_deploy.fileio import sha256_file

    artifacts = [
        {"kind": "onnx", "precision": "fp32", "scheme": None, "path": str(onnx_files["fp32"]), "sha256": sha256_file(onnx_files["fp32"])},
        {"kind": "onnx", "precision": "int8", "scheme": "cpu", "path": str(onnx_files["u8s8"]), "sha256": sha256_file(onnx_files["u8s8"])},
        {"kind": "onnx", "precision": "int8", "scheme": "tensorrt", "path": str(onnx_files["s8s8"]), "sha256": sha256_file(onnx_files["s8s8"])},
    ]
    if engines:
        engine = folder / "model.int8.engine"
        engine.write_bytes(b"\0" * 64)
        artifacts.append({"kind": "tensorrt", "precision": "int8", "path": str(engine), "sidecar": str(engine) + ".json",
                          "sha256": sha256_file(engine), "onnx": str(onnx_files["s8s8"]), "min_batch": 1, "opt_batch": 64,
                          "max_batch": 256, "compute_capability": "8.9", "flavour": "tensorrt-rtx"})
    return {"format": "resnet-deploy/export", "version": 1, "artifacts": artifacts}


def test_build_runners_rows_and_skips(model, onnx_files, tmp_path):
    manifest = manifest_for(onnx_files, tmp_path, engines=True)
    runners = build_runners(model, RunnerOptions(threads=1), exports=[(tmp_path, manifest)])
    names = [r.name for r in runners]
    assert names[0] == "pytorch-fp32"
    assert {"onnxruntime-fp32", "onnxruntime-int8-u8s8", "onnxruntime-int8-s8s8"} <= set(names)
    skipped = {r.name: r.reason for r in runners if isinstance(r, SkippedRunner)}
    assert "no quantized artifact" in skipped["pytorch-int8-x86"]
    # The engine row is built even without a GPU: activation checks the engine, then reports the skip.
    assert isinstance(next(r for r in runners if r.name == "tensorrt-int8"), TensorRTRunner)
    if not torch.cuda.is_available():
        assert "pytorch-fp16" in skipped and "pytorch-bf16" in skipped
    # Only what was asked for (plus the baseline).
    only = build_runners(model, RunnerOptions(backends=["onnxruntime"], precisions=["int8"], threads=1), exports=[(tmp_path, manifest)])
    assert [r.name for r in only] == ["pytorch-fp32", "onnxruntime-int8-u8s8", "onnxruntime-int8-s8s8"]


def test_build_runners_refuses_changed_artifacts(model, onnx_files, tmp_path):
    manifest = manifest_for(onnx_files, tmp_path)
    manifest["artifacts"][0]["sha256"] = "0" * 64
    with pytest.raises(UserError, match="changed since it was exported"):
        build_runners(model, RunnerOptions(), exports=[(tmp_path, manifest)])


def test_build_runners_without_artifacts_lists_skips(model):
    runners = build_runners(model, RunnerOptions())
    reasons = {r.name: r.reason for r in runners if isinstance(r, SkippedRunner)}
    assert "no export directory" in reasons["onnxruntime"] and "no export directory" in reasons["tensorrt"]
    with pytest.raises(UserError, match="--backend"):
        build_runners(model, RunnerOptions(backends=["directml"]))


# ---------------------------------------------------------------------------- tensorrt


def test_tensorrt_runner_refuses_missing_engine(tmp_path):
    with pytest.raises(UserError, match="engine not found"):
        TensorRTRunner(tmp_path / "nope.engine", precision="int8")


def test_tensorrt_engine_without_sidecar_is_refused(tmp_path, monkeypatch):
    """The sidecar check itself, wherever this runs: TensorRT is made importable (a stand-in module), so
    the refusal can only come from the missing sidecar, before anything would be deserialised."""
    import types

    from resnet_deploy.backends import tensorrt as tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda: (types.SimpleNamespace(), "tensorrt-rtx", "1.7.1.116"))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 16)
    runner = TensorRTRunner(engine, precision="int8")
    assert runner.device == "cuda:0" and runner.name == "tensorrt-int8"
    with pytest.raises(UserError, match=r"engine .*model\.engine has no sidecar model\.engine\.json"):
        runner.activate()
    assert not runner.is_active and runner.sidecar is None
    if not torch.cuda.is_available():
        assert "none is visible" in cuda_unavailable_reason()


def test_build_runners_merges_exports_without_repeating_artifacts(model, onnx_files, tmp_path):
    full = manifest_for(onnx_files, tmp_path)
    tensorrt_export = {**full, "artifacts": [a for a in full["artifacts"] if a.get("scheme") != "cpu"]}
    cpu_export = {**full, "artifacts": [a for a in full["artifacts"] if a.get("scheme") != "tensorrt"]}
    runners = build_runners(
        model, RunnerOptions(backends=["onnxruntime"], threads=1), exports=[(tmp_path, tensorrt_export), (tmp_path, cpu_export)]
    )
    assert [r.name for r in runners] == ["pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8-s8s8", "onnxruntime-int8-u8s8"]
