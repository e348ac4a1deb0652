"""TensorRT engines: module choice, missing-TensorRT message, real builds with TensorRT-RTX on CPU,
sidecar contents and every mismatch ``check_engine`` must catch before an engine is loaded.

The builds are real (TensorRT-RTX parses the ONNX and serialises an engine for compute capability
8.6 without a GPU); running them needs a GPU, which the bench stage's runner covers.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.cli import main
from tensorrt_support import require_tensorrt
from resnet_deploy.data import Normalization
from resnet_deploy.errors import MissingDependencyError, UserError
from resnet_deploy.export import ExportInfo, build_engine, check_engine, export_onnx, import_tensorrt, read_sidecar
from resnet_deploy.export import tensorrt as trt_lib  # the old import path, still working
from resnet_deploy.tensorrt import runtime as trt_runtime  # where TensorRT and the GPU are looked up
from resnet_deploy.models import ModelSpec, build_model

NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


# Skipped without TensorRT-RTX; failed instead in CI when the tensorrt extra is installed but broken.
needs_rtx = pytest.mark.tensorrt(rtx=True)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Pretend neither TensorRT nor TensorRT-RTX is installed (a None entry makes import fail)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    monkeypatch.delenv(trt_lib.FLAVOUR_ENV, raising=False)


def test_missing_tensorrt_names_what_to_install(no_tensorrt):
    with pytest.raises(MissingDependencyError) as info:
        import_tensorrt()
    message = str(info.value)
    assert "pip install tensorrt" in message and "resnet-deploy[tensorrt]" in message
    assert info.value.exit_code == 2


def test_cli_tensorrt_missing_exits_2(no_tensorrt, synthetic_checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["export", str(synthetic_checkpoint), "--tensorrt", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "needs TensorRT" in result.output and "pip install" in result.output


def test_full_tensorrt_is_preferred(monkeypatch):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.13.0.35"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.delenv(trt_lib.FLAVOUR_ENV, raising=False)
    module, flavour, version = import_tensorrt()
    assert module is fake and flavour == "tensorrt" and version == "10.13.0.35"
    monkeypatch.setenv(trt_lib.FLAVOUR_ENV, "bogus")
    with pytest.raises(UserError, match="not a TensorRT flavour"):
        import_tensorrt()


@needs_rtx
def test_rtx_is_used_when_full_tensorrt_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.delenv(trt_lib.FLAVOUR_ENV, raising=False)
    _, flavour, version = import_tensorrt()
    assert flavour == "tensorrt-rtx" and version.startswith("1.")


def test_compute_capability_parsing():
    assert trt_lib.parse_compute_capability("8.6") == "8.6"
    assert trt_lib.parse_compute_capability("sm89") == "8.9"
    assert trt_lib.parse_compute_capability("SM_120") == "12.0"
    with pytest.raises(UserError):
        trt_lib.parse_compute_capability("ampere")


# --------------------------------------------------------------------------------------------- real builds


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet20")).eval()
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for precision in ("fp32", "fp16"):
        info = ExportInfo({"name": "resnet20"}, NORM.to_dict(), [f"c{i}" for i in range(10)], "0" * 64, precision)
        files[precision] = export_onnx(model, folder / f"model-{precision}.onnx", info).path
    info = ExportInfo({"name": "resnet20"}, NORM.to_dict(), [f"c{i}" for i in range(10)], "0" * 64, "fp32")
    files["static"] = export_onnx(model, folder / "model-fp32-b8.onnx", info, dynamic_batch=False, static_batch=8).path
    return files


@pytest.fixture(scope="module")
def engines(onnx_files, tmp_path_factory):
    require_tensorrt(rtx=True)
    mp = pytest.MonkeyPatch()
    mp.setattr(trt_runtime, "current_gpu", lambda: None)  # the CPU-only case, even where a GPU exists
    folder = tmp_path_factory.mktemp("engines")
    built = {}
    try:
        for precision in ("fp32", "fp16"):
            engine = folder / f"model-{precision}.sm86.engine"
            sidecar = build_engine(onnx_files[precision], engine, precision=precision, min_batch=1, opt_batch=32,
                                   max_batch=128, workspace_mb=256, opt_level=2, timing_cache=folder / "timing.cache",
                                   compute_capability="8.6")
            built[precision] = (engine, sidecar)
    finally:
        mp.undo()
    return built


@needs_rtx
def test_engines_build_with_sidecar(engines, onnx_files):
    for precision, (engine, sidecar) in engines.items():
        assert engine.stat().st_size > 100_000
        assert read_sidecar(engine) == sidecar
        assert sidecar["flavour"] == "tensorrt-rtx" and sidecar["precision"] == precision
        assert sidecar["target"]["compute_capability"] == "8.6"
        assert sidecar["shapes"]["input"] == {"min": [1, 3, 32, 32], "opt": [32, 3, 32, 32], "max": [128, 3, 32, 32]}
        assert sidecar["shapes"]["logits"] == [-1, 10]
        assert sidecar["builder"]["workspace_mb"] == 256 and sidecar["builder"]["optimization_level"] == 2
        assert sidecar["builder"]["timing_cache"]["used"] is False  # TensorRT-RTX has none
        assert sidecar["layer_precision"]["convolutions"] == 19
        report = json.loads((engine.parent / sidecar["layer_report"]).read_text())
        conv_dtypes = {layer["outputs"][0] for layer in report["layers"] if layer["type"] == "CONVOLUTION"}
        assert conv_dtypes == ({"FLOAT"} if precision == "fp32" else {"HALF"})
    assert engines["fp32"][1]["builder"]["tf32"] is False


@needs_rtx
def test_check_engine_accepts_a_good_engine(engines, onnx_files, monkeypatch):
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: {"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"})
    engine, sidecar = engines["fp32"]
    assert check_engine(engine)["engine"]["sha256"] == sidecar["engine"]["sha256"]
    assert check_engine(engine, onnx_files["fp32"]) == sidecar


@pytest.fixture
def engine_copy(engines, onnx_files, tmp_path):
    """A private copy of the fp32 engine, its sidecar and ONNX, to tamper with."""
    import shutil

    engine, _ = engines["fp32"]
    for source in (engine, trt_lib.sidecar_path(engine), onnx_files["fp32"]):
        shutil.copy(source, tmp_path / source.name)
    sidecar_file = trt_lib.sidecar_path(tmp_path / engine.name)
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["onnx"]["file"] = onnx_files["fp32"].name  # side by side, as in an export folder
    sidecar_file.write_text(json.dumps(sidecar))
    return tmp_path / engine.name, tmp_path / onnx_files["fp32"].name


@needs_rtx
def test_check_engine_detects_other_gpu(engine_copy, monkeypatch):
    engine, _ = engine_copy
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: {"name": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(UserError, match="built for compute capability 8.6.*8.9"):
        check_engine(engine)


@needs_rtx
def test_check_engine_detects_other_tensorrt(engine_copy):
    engine, _ = engine_copy
    sidecar_file = trt_lib.sidecar_path(engine)
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["tensorrt_version"] = "1.6.1.120"
    sidecar_file.write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match="1.6.1.120"):
        check_engine(engine)
    sidecar["tensorrt_version"], sidecar["flavour"] = read_version(), "tensorrt"
    sidecar_file.write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match="built with tensorrt "):
        check_engine(engine)


def read_version() -> str:
    return import_tensorrt()[2]


@needs_rtx
def test_check_engine_detects_changed_onnx_engine_and_missing_sidecar(engine_copy, onnx_files):
    engine, onnx_path = engine_copy
    with pytest.raises(UserError, match="another ONNX"):
        check_engine(engine, onnx_files["fp16"])
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\x00")  # the recorded source changed after the build
    with pytest.raises(UserError, match="another ONNX"):
        check_engine(engine)
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its sidecar"):
        check_engine(engine)
    trt_lib.sidecar_path(engine).unlink()
    with pytest.raises(UserError, match="no sidecar"):
        check_engine(engine)
    with pytest.raises(UserError, match="not found"):
        check_engine(engine.with_name("absent.engine"))


@needs_rtx
def test_deserialize_refuses_without_gpu(engine_copy, monkeypatch):
    engine, _ = engine_copy
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: None)
    with pytest.raises(UserError, match="no CUDA GPU"):
        trt_lib.deserialize_engine(engine)


@needs_rtx
def test_build_rejects_bad_requests(onnx_files, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: None)
    common = dict(min_batch=1, opt_batch=8, max_batch=16, workspace_mb=256, opt_level=1, timing_cache=None)
    with pytest.raises(UserError, match="fp32 model"):
        build_engine(onnx_files["fp32"], tmp_path / "x.engine", precision="fp16", compute_capability="8.6", **common)
    with pytest.raises(UserError, match="not a target of TensorRT-RTX"):
        build_engine(onnx_files["fp32"], tmp_path / "x.engine", precision="fp32", compute_capability="9.0", **common)
    with pytest.raises(UserError, match="--compute-capability"):
        build_engine(onnx_files["fp32"], tmp_path / "x.engine", precision="fp32", **common)
    with pytest.raises(UserError, match="static batch of 8"):
        build_engine(onnx_files["static"], tmp_path / "x.engine", precision="fp32", compute_capability="8.6", **common)
    with pytest.raises(UserError, match="min-batch"):
        build_engine(onnx_files["fp32"], tmp_path / "x.engine", precision="fp32", compute_capability="8.6",
                     **{**common, "min_batch": 32})
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx" * 100)
    with pytest.raises(UserError):
        build_engine(garbage, tmp_path / "x.engine", precision="fp32", compute_capability="8.6", **common)
    assert not (tmp_path / "x.engine").exists()


@needs_rtx
def test_static_batch_engine(onnx_files, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: None)
    sidecar = build_engine(onnx_files["static"], tmp_path / "s.engine", precision="fp32", min_batch=8, opt_batch=8,
                           max_batch=8, workspace_mb=256, opt_level=1, timing_cache=None, compute_capability="8.9")
    assert sidecar["dynamic_batch"] is False and sidecar["shapes"]["logits"] == [8, 10]
    assert sidecar["target"]["compute_capability"] == "8.9"


@needs_rtx
def test_cli_export_builds_engines_and_check_engine(synthetic_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: None)
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(synthetic_checkpoint), "--fp16", "--output-dir", str(tmp_path), "--name", "r",
                                  "--compute-capability", "8.6", "--max-batch", "64"])
    assert result.exit_code == 0, result.output
    raw = json.loads((tmp_path / "r" / "manifest.json").read_text())
    engines = [a for a in raw["artifacts"] if a["kind"] == "tensorrt"]
    assert [(e["precision"], e["onnx"], e["max_batch"], e["compute_capability"]) for e in engines] == [
        ("fp32", "model-fp32.onnx", 64, "8.6"), ("fp16", "model-fp16.onnx", 64, "8.6")]
    from resnet_deploy.export import load_manifest

    loaded = load_manifest(tmp_path / "r")
    engine_path = next(a["path"] for a in loaded["artifacts"] if a["kind"] == "tensorrt")
    result = runner.invoke(main, ["check-engine", engine_path])
    assert result.exit_code == 0 and '"precision": "fp32"' in result.output
    # without --compute-capability on a machine without a GPU, engines are skipped with the reason
    result = runner.invoke(main, ["export", str(synthetic_checkpoint), "--output-dir", str(tmp_path), "--name", "auto"])
    assert result.exit_code == 0, result.output
    raw = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert raw["skipped"][0]["kind"] == "tensorrt" and "--compute-capability" in raw["skipped"][0]["reason"]
    result = runner.invoke(main, ["build-engine", str(tmp_path / "auto"), "--compute-capability", "8.9"])
    assert result.exit_code == 0, result.output
    raw = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert [a["compute_capability"] for a in raw["artifacts"] if a["kind"] == "tensorrt"] == ["8.9"]
    assert raw["skipped"] == []


@needs_rtx
@pytest.mark.slow
def test_int8_qdq_engine_from_a_quantized_model(synthetic_checkpoint, synthetic, tmp_path, monkeypatch):
    """The int8 path end to end without the trained fixture: PT2E (tensorrt scheme) -> Q/DQ ONNX ->
    TensorRT-RTX explicit-quantization engine, inspected: every convolution has Q/DQ inputs."""
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import load_quantized, quantize_ptq

    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: None)
    loaded = load_checkpoint(synthetic_checkpoint)
    quantize_ptq(loaded, synthetic, tmp_path / "q", target="tensorrt", calib_size=128, evaluate=False)
    quantized = load_quantized(tmp_path / "q", checkpoint=synthetic_checkpoint)
    info = ExportInfo(loaded.spec.to_dict(), loaded.normalization.to_dict(), loaded.classes, loaded.sha256, "int8", "tensorrt")
    onnx_path = export_onnx(quantized.module, tmp_path / "model-int8-tensorrt.onnx", info).path
    engine = tmp_path / "model-int8-tensorrt.sm89.engine"
    sidecar = build_engine(onnx_path, engine, precision="int8", min_batch=1, opt_batch=16, max_batch=64, workspace_mb=256,
                           opt_level=3, timing_cache=None, compute_capability="8.9")
    assert sidecar["precision"] == "int8" and sidecar["onnx"]["scheme"] == "tensorrt"
    summary = sidecar["layer_precision"]
    assert summary["quantized_convolutions"] == summary["convolutions"] == 19
    assert summary["quantize_layers"] > 0 and summary["by_type_and_output_dtype"]["QUANTIZE:INT8"] == summary["quantize_layers"]
    assert check_engine(engine, onnx_path)["target"]["compute_capability"] == "8.9"
    with pytest.raises(UserError, match="int8 model"):
        build_engine(onnx_path, tmp_path / "x.engine", precision="fp32", compute_capability="8.9", timing_cache=None)


# --------------------------------------------------------------------------------------------- when tests skip


def test_broken_tensorrt_fails_in_ci_and_skips_elsewhere(monkeypatch):
    """A TensorRT-RTX install whose bindings do not load: a skip on a developer machine, a failure in CI
    (CI set) when the tensorrt extra is installed, a skip in CI when the extra is not installed."""
    import tensorrt_support

    monkeypatch.setattr(tensorrt_support, "tensorrt_problem", lambda rtx=False: "OSError: libtensorrt_rtx.so.1: cannot open shared object file")
    monkeypatch.setattr(tensorrt_support, "tensorrt_extra_installed", lambda: ["tensorrt-rtx-cu13-bindings 1.7.1.116"])
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot open shared object file"):
        tensorrt_support.require_tensorrt(rtx=True)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI with the tensorrt extra installed \(tensorrt-rtx-cu13-bindings 1\.7\.1\.116\)"):
        tensorrt_support.require_tensorrt(rtx=True)
    monkeypatch.setattr(tensorrt_support, "tensorrt_extra_installed", lambda: [])
    with pytest.raises(pytest.skip.Exception):
        tensorrt_support.require_tensorrt()
    monkeypatch.setenv("CI", "false")
    assert not tensorrt_support.in_ci()


def test_no_engine_from_an_onnx_file_that_failed_parity(tmp_path, monkeypatch):
    """The engine builder is never called for an ONNX file whose parity check failed: the manifest says
    why instead. Runs without TensorRT (the builder is replaced by one that fails the test)."""
    from resnet_deploy.export import run as export_run

    def builder_must_not_run(*args, **kwargs):
        raise AssertionError("an engine was built from an ONNX file that failed parity")

    monkeypatch.setattr(export_run, "build_engine", builder_must_not_run)
    failed = {"passed": False, "failures": ["top1_agreement 97.00% < 99.5%"]}
    manifest = {"artifacts": [{"kind": "onnx", "precision": "int8", "scheme": "tensorrt", "path": "model-int8-tensorrt.onnx", "parity": failed}],
                "skipped": []}  # fmt: skip
    options = export_run.ExportOptions(checkpoint=tmp_path / "model.pt", output_dir=tmp_path)
    export_run._build_engines(options, manifest, tmp_path, {"build": True, "compute_capability": "8.6"})
    assert [a["kind"] for a in manifest["artifacts"]] == ["onnx"]
    assert manifest["skipped"] == [{"kind": "tensorrt", "precision": "int8", "reason": "model-int8-tensorrt.onnx failed parity"}]
