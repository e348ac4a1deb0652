"""The build as a chain of small loaders, cut where polygraphy's ``backend/trt/loader.py`` cuts it:
network from an ONNX path -> builder config (+ optimisation profile, timing cache) -> serialized engine
bytes -> engine from bytes. Each takes the previous step's result, so other builds (the inspect
stage's debug-tensor engine) reuse the steps they need.

Precision comes from the ONNX file, not from builder flags: networks are created STRONGLY_TYPED, so an
FP32 ONNX gives an FP32 engine, the FP16 ONNX an FP16 engine and the Q/DQ ONNX an int8 engine by
explicit quantization (TensorRT-RTX has no FP16/INT8 builder flags at all; full TensorRT recommends
strongly typed networks for Q/DQ). TF32 is turned off for FP32 engines so that "fp32" means what it says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, VerificationError
from ..fileio import atomic_write_bytes
from ..onnx_file import INPUT_NAME
from . import runtime
from .settings import BatchRange, BuildSettings


@dataclass
class ParsedNetwork:
    """A parsed ONNX network and what must outlive it (the builder that made it, the parser, the logger)."""

    trt: Any
    builder: Any
    network: Any
    parser: Any
    logger: Any
    strongly_typed: bool
    label: str  # "tensorrt-rtx 1.7.1.116", for messages


def network_from_onnx(trt, logger, onnx_path: Path, label: str) -> ParsedNetwork:
    """``NetworkFromOnnxPath``: a strongly typed network parsed from ``onnx_path``, input named INPUT_NAME."""
    builder = trt.Builder(logger)
    if builder is None:
        raise UserError(f"{label} could not create a builder: {'; '.join(logger.errors()) or 'no CUDA device?'}")
    creation = trt.NetworkDefinitionCreationFlag
    strongly_typed = hasattr(creation, "STRONGLY_TYPED")
    flags = 1 << int(creation.STRONGLY_TYPED) if strongly_typed else 0
    if hasattr(creation, "EXPLICIT_BATCH") and not strongly_typed:
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # TensorRT 8.x
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors()
        raise VerificationError(f"{label} rejected {onnx_path.name}: " + " | ".join(e.strip() for e in errors[:5]))
    input_name = network.get_input(0).name
    if input_name != INPUT_NAME:
        raise UserError(f"{onnx_path} input is {input_name!r}, expected {INPUT_NAME!r}")
    return ParsedNetwork(trt, builder, network, parser, logger, strongly_typed, label)


def create_config(parsed: ParsedNetwork, settings: BuildSettings, flavour: str, target: dict):
    """``CreateConfig``: workspace, optimisation level, detailed profiling, TF32 off for fp32, and for
    TensorRT-RTX the one target compute capability."""
    trt = parsed.trt
    config = parsed.builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the engine inspector name layer precisions
    if settings.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if not parsed.strongly_typed:  # TensorRT 8.x: precision by builder flags
        if settings.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        if settings.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if flavour == "tensorrt-rtx":
        config.num_compute_capabilities = 1
        current = target["current_gpu"]
        capability = trt.ComputeCapability.CURRENT if current else runtime.rtx_compute_capability(trt, target["compute_capability"])
        if not config.set_compute_capability(capability, 0):
            raise UserError(f"TensorRT-RTX refused compute capability {target['compute_capability']}")
    return config


def add_profile(parsed: ParsedNetwork, config, batches: BatchRange) -> None:
    """The optimisation profile of a dynamic-batch input (a static-batch network needs none)."""
    shapes = batches.input_shapes()
    profile = parsed.builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)


def load_timing_cache(flavour: str, config, timing_cache: str | os.PathLike | None) -> dict | None:
    """Reuse measured tactics from ``timing_cache`` (full TensorRT); what was done, for the sidecar."""
    if timing_cache is None:
        return None
    if flavour == "tensorrt-rtx":
        # TensorRT-RTX deprecates timing caches (no-ops): kernels are chosen and compiled at run time.
        return {"path": str(timing_cache), "used": False, "reason": "TensorRT-RTX has no timing cache (kernels are JIT-compiled at run time)"}
    path = Path(timing_cache)
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    reused = bool(data) and config.set_timing_cache(cache, ignore_mismatch=False)
    if data and not reused:  # a cache from another GPU or TensorRT version: start a fresh one
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    elif not data:
        config.set_timing_cache(cache, ignore_mismatch=False)
    return {"path": str(path), "used": True, "reused_bytes": len(data) if reused else 0}


def save_timing_cache(flavour: str, config, timing_cache, info: dict | None) -> dict | None:
    if timing_cache is None or flavour == "tensorrt-rtx" or info is None:
        return info
    data = bytes(config.get_timing_cache().serialize())
    atomic_write_bytes(timing_cache, data)
    return {**info, "written_bytes": len(data)}


def engine_bytes(parsed: ParsedNetwork, config, what: str) -> bytes:
    """``EngineBytesFromNetwork``: the serialized engine (plan); VerificationError with TensorRT's words."""
    serialized = parsed.builder.build_serialized_network(parsed.network, config)
    if serialized is None:
        raise VerificationError(f"{parsed.label} could not build {what}: " + (" | ".join(parsed.logger.errors()[:5]) or "no error message"))
    return bytes(serialized)


_RUNTIMES: dict[str, Any] = {}


def engine_from_bytes(trt, flavour: str, plan: bytes, what: str, label: str):
    """``EngineFromBytes``: the ICudaEngine of ``plan``. The runtime that deserialised an engine must
    outlive it, so one runtime (and its logger) per flavour is kept for the life of the process."""
    if flavour not in _RUNTIMES:
        logger = runtime.make_logger(trt)
        _RUNTIMES[flavour] = (trt.Runtime(logger), logger)
    trt_runtime, logger = _RUNTIMES[flavour]
    logger.messages.clear()
    engine = trt_runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"{label} could not deserialize {what}: " + (" | ".join(logger.errors()[:3]) or "no message"))
    return engine
