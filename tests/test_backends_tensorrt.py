"""The TensorRT runner on a machine without a GPU: what CPU allows.

A real engine is built here with TensorRT-RTX (it builds for a named GPU without one). The runner must
check the engine (sidecar hash, TensorRT version, source ONNX) before anything else, report a missing
GPU as a skip with the reason, a broken engine as an error, and a missing TensorRT with the install
command. Running engines needs a GPU: see the GPU notes in the bench report.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnet_deploy import export as export_stage
from resnet_deploy.backends import BackendUnavailable, TensorRTRunner, fp32_runner
from resnet_deploy.bench import BenchSettings, run_benchmark
from resnet_deploy.data import Normalization, synthetic_dataset
from resnet_deploy.errors import MissingDependencyError, UserError
from resnet_deploy.models import ModelSpec, build_model
from tensorrt_support import require_tensorrt

NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour on a machine without a GPU")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelSpec("resnet20")).eval()


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory):
    require_tensorrt()  # a skip without TensorRT; in CI with the tensorrt extra installed, a failure
    folder = tmp_path_factory.mktemp("trt")
    info = export_stage.ExportInfo({"name": "resnet20"}, NORM.to_dict(), [f"c{i}" for i in range(10)], "0" * 64, "fp32")
    onnx_path = export_stage.export_onnx(model, folder / "model-fp32.onnx", info).path
    engine_path = folder / "model-fp32.sm86.engine"
    mp = pytest.MonkeyPatch()
    mp.setattr("resnet_deploy.tensorrt.runtime.current_gpu", lambda: None)
    try:
        export_stage.build_engine(onnx_path, engine_path, precision="fp32", min_batch=1, opt_batch=8, max_batch=16,
                                  workspace_mb=64, opt_level=0, timing_cache=None, compute_capability="8.6")
    finally:
        mp.undo()
    return engine_path, onnx_path


@NO_GPU
def test_good_engine_without_gpu_is_skipped_with_reason(engine):
    engine_path, onnx_path = engine
    runner = TensorRTRunner(engine_path, precision="fp32", onnx_path=onnx_path)
    with pytest.raises(BackendUnavailable, match="CUDA GPU and none is visible"):
        runner.activate()
    assert runner.sidecar is not None and runner.sidecar["precision"] == "fp32", "the engine was checked before the GPU"
    assert not runner.is_active


@NO_GPU
def test_broken_engine_is_an_error_not_a_skip(engine, model, tmp_path):
    engine_path, onnx_path = engine
    tampered = tmp_path / engine_path.name
    tampered.write_bytes(engine_path.read_bytes() + b"\0")
    (tmp_path / (engine_path.name + ".json")).write_bytes((engine_path.parent / (engine_path.name + ".json")).read_bytes())
    sidecar = export_stage.read_sidecar(engine_path)
    assert sidecar  # the sidecar copied next to the tampered engine is the good one
    runner = TensorRTRunner(tampered, precision="fp32", onnx_path=onnx_path)
    with pytest.raises(UserError, match="does not match its sidecar") as info:
        runner.activate()
    assert not isinstance(info.value, BackendUnavailable)

    data = synthetic_dataset(train_size=32, test_size=16)
    settings = BenchSettings(batch_sizes=[1], warmup_iterations=0, warmup_seconds=0, min_iterations=1, min_seconds=0, max_seconds=0.2)
    measured = run_benchmark(
        [fp32_runner(model, threads=1), TensorRTRunner(engine_path, precision="fp32", onnx_path=onnx_path),
         TensorRTRunner(tampered, precision="fp32", name="tensorrt-fp32-tampered", onnx_path=onnx_path)],
        data.test_images, data.test_labels, NORM, settings,
    )
    rows = {row["name"]: row for row in measured["rows"]}
    assert rows["tensorrt-fp32"]["status"] == "skipped" and "GPU" in rows["tensorrt-fp32"]["reason"]
    assert rows["tensorrt-fp32-tampered"]["status"] == "error" and "sidecar" in rows["tensorrt-fp32-tampered"]["reason"]


def test_missing_tensorrt_names_the_install(tmp_path, monkeypatch):
    engine_path = tmp_path / "model.engine"
    engine_path.write_bytes(b"\0" * 32)

    def missing():
        raise MissingDependencyError("TensorRT", "pip install tensorrt (or tensorrt-rtx-cu13-bindings)", "loading TensorRT engines")

    monkeypatch.setattr("resnet_deploy.tensorrt.runtime.import_tensorrt", missing)
    runner = TensorRTRunner(engine_path, precision="int8")
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        runner.activate()


def test_batch_outside_profile_is_refused_before_running(engine):
    """The profile check itself (no GPU needed): batch sizes are validated against min/max."""
    engine_path, onnx_path = engine
    runner = TensorRTRunner(engine_path, precision="fp32", onnx_path=onnx_path)
    runner.min_batch_size, runner.max_batch_size = 1, 16
    with pytest.raises(UserError, match=r"max batch 16"):
        runner._check_batch(np.zeros((32, 3, 32, 32), np.float32))
    runner.min_batch_size = 4
    with pytest.raises(UserError, match="below the engine profile's min batch 4"):
        runner._check_batch(np.zeros((2, 3, 32, 32), np.float32))
