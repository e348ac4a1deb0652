"""The two ends of an engine's life: ``build_engine`` (ONNX file -> engine file + sidecar + layer
report, composed from the loaders) and ``deserialize_engine`` (sidecar checks -> ICudaEngine)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import UserError, VerificationError
from ..fileio import atomic_write_bytes, write_json
from ..onnx_file import read_metadata, verify_onnx_file
from . import loader, runtime
from .reports import inspect_built_engine, network_layer_report
from .settings import BatchRange, BuildSettings
from .sidecar import EngineBuild, check_engine, layer_report_path, new_sidecar, sidecar_path


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str,
    min_batch: int = 1,
    opt_batch: int = 64,
    max_batch: int = 256,
    workspace_mb: int = 1024,
    opt_level: int = 3,
    timing_cache: str | os.PathLike | None = None,
    compute_capability: str | None = None,
) -> dict:
    """Build a TensorRT engine from a resnet-deploy ONNX file; write it and its sidecar. Returns the sidecar.

    ``precision`` must be the ONNX file's own (its ``resnet_deploy.precision`` metadata): the network is
    strongly typed. The optimisation profile covers batches ``min_batch..max_batch``, tuned for
    ``opt_batch``; a static-shape ONNX needs all three equal to its batch. ``workspace_mb``,
    ``opt_level``, ``timing_cache`` and ``compute_capability``: see ``BuildSettings``. TensorRT-RTX can
    build for a named compute capability without a GPU; full TensorRT only builds for the GPU it runs on.
    """
    settings = BuildSettings(precision, BatchRange(min_batch, opt_batch, max_batch), workspace_mb, opt_level,
                             timing_cache, compute_capability)
    return build_engine_file(Path(onnx_path), Path(engine_path), settings)


def build_engine_file(onnx_path: Path, engine_path: Path, settings: BuildSettings) -> dict:
    """``build_engine`` with its settings validated: the loader chain, then the files."""
    scheme, static_batch = _check_source(onnx_path, settings)
    trt, flavour, version = runtime.import_tensorrt()
    target = resolve_target(trt, flavour, runtime.current_gpu(), settings.compute_capability)
    logger = runtime.make_logger(trt)
    start = time.perf_counter()
    parsed = loader.network_from_onnx(trt, logger, onnx_path, f"{flavour} {version}")
    network_report = network_layer_report(trt, parsed.network)
    config = loader.create_config(parsed, settings, flavour, target)
    if static_batch is None:
        loader.add_profile(parsed, config, settings.batches)
    cache_info = loader.load_timing_cache(flavour, config, settings.timing_cache)
    plan = loader.engine_bytes(parsed, config, f"a {settings.precision} engine from {onnx_path.name}")
    build_seconds = time.perf_counter() - start
    cache_info = loader.save_timing_cache(flavour, config, settings.timing_cache, cache_info)
    atomic_write_bytes(engine_path, plan)
    sidecar = new_sidecar(EngineBuild(
        settings, onnx_path, scheme, static_batch, engine_path, len(plan), int(parsed.network.get_output(0).shape[1]),
        flavour, version, target, parsed.strongly_typed, cache_info, build_seconds, network_report["summary"],
    ))
    if target["current_gpu"]:
        network_report["engine_inspector"] = inspect_built_engine(trt, logger, plan)
    write_json(layer_report_path(engine_path), network_report)
    write_json(sidecar_path(engine_path), sidecar)
    if settings.precision == "int8" and network_report["summary"]["quantized_convolutions"] == 0:
        raise VerificationError(f"{onnx_path.name}: no convolution has Q/DQ inputs, so the int8 engine would not run int8 kernels")
    return sidecar


def _check_source(onnx_path: Path, settings: BuildSettings) -> tuple[str | None, int | None]:
    """The ONNX file is checked, of the engine's precision and scheme, and its batch fits the profile.
    Returns (int8 scheme or None, static batch or None)."""
    model_proto = verify_onnx_file(onnx_path)
    metadata = read_metadata(model_proto)
    precision, onnx_precision = settings.precision, metadata.get("precision")
    if onnx_precision and onnx_precision != precision:
        raise UserError(
            f"{onnx_path} is a {onnx_precision} model; a {precision} engine needs the {precision} ONNX "
            "(engines are strongly typed: their precision is the ONNX file's)"
        )
    if precision == "int8" and metadata.get("scheme") == "cpu":
        raise UserError(
            f"{onnx_path} uses the cpu int8 scheme (uint8 activations with zero-points), which TensorRT rejects",
            hint="quantize with --target tensorrt (symmetric int8) for TensorRT engines",
        )
    static_batch = _static_batch(model_proto)
    if static_batch is not None and settings.batches != BatchRange.fixed(static_batch):
        raise UserError(
            f"{onnx_path} has a static batch of {static_batch}; the engine's --min/--opt/--max-batch must all be {static_batch}"
        )
    return metadata.get("scheme") or None, static_batch


def _static_batch(model_proto) -> int | None:
    dim = model_proto.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def resolve_target(trt, flavour: str, gpu: dict | None, compute_capability: str | None) -> dict:
    """The GPU an engine is built for: {"compute_capability", "gpu_name", "current_gpu"}."""
    wanted = runtime.parse_compute_capability(compute_capability) if compute_capability else None
    if flavour == "tensorrt":
        if gpu is None:
            raise UserError(
                "full TensorRT builds engines only on the GPU they will run on, and no CUDA GPU was found",
                hint="build on the target machine, or use TensorRT-RTX (pip install \"resnet-deploy[tensorrt]\") "
                "with --compute-capability",
            )
        if wanted and wanted != gpu["compute_capability"]:
            raise UserError(
                f"--compute-capability {wanted} differs from this machine's GPU ({gpu['name']}, {gpu['compute_capability']}); "
                "full TensorRT builds for the GPU it runs on"
            )
        return {"compute_capability": gpu["compute_capability"], "gpu_name": gpu["name"], "current_gpu": True}
    if wanted is None:
        if gpu is None:
            raise UserError(
                "no CUDA GPU here, so TensorRT-RTX needs the target GPU named: pass --compute-capability "
                "(e.g. 8.6 for RTX 30xx/A10, 8.9 for RTX 40xx/L4, 12.0 for RTX 50xx)"
            )
        wanted = gpu["compute_capability"]
    use_current = gpu is not None and gpu["compute_capability"] == wanted
    if not use_current:
        runtime.rtx_compute_capability(trt, wanted)  # validates it is a known target
    return {"compute_capability": wanted, "gpu_name": gpu["name"] if use_current else None, "current_gpu": use_current}


def deserialize_engine(engine_path: str | os.PathLike):
    """``check_engine``, then ``EngineFromBytes``: the ICudaEngine, ready for execution contexts."""
    sidecar = check_engine(engine_path)
    trt, flavour, version = runtime.import_tensorrt()
    if runtime.current_gpu() is None:
        raise UserError(
            f"engine {Path(engine_path).name} (for compute capability {sidecar['target'].get('compute_capability')}) "
            "cannot run here: no CUDA GPU was found"
        )
    return loader.engine_from_bytes(trt, flavour, Path(engine_path).read_bytes(), str(engine_path), f"{flavour} {version}")
