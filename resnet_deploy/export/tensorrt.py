"""TensorRT engines from resnet-deploy's ONNX files: build, sidecar, and checks before loading.

Written against the TensorRT Python API, and usable with either flavour:

* full TensorRT (``import tensorrt``; ``pip install tensorrt`` from NVIDIA): builds for the GPU it
  runs on. Preferred when both are installed.
* TensorRT-RTX (``import tensorrt_rtx_bindings``; ``pip install "resnet-deploy[tensorrt]"``): the same
  API, builds without a GPU for a named compute capability (``config.set_compute_capability``), and
  compiles kernels when the engine is first run (so building takes well under a second and has no
  timing cache: timing cache calls are no-ops there).

Precision comes from the ONNX file, not from builder flags: networks are created STRONGLY_TYPED, so an
FP32 ONNX gives an FP32 engine, the FP16 ONNX (half weights and activations) an FP16 engine, and the
Q/DQ ONNX an int8 engine by explicit quantization (TensorRT-RTX has no FP16/INT8 builder flags at all;
full TensorRT recommends strongly typed networks for Q/DQ). TF32 is turned off for FP32 engines so that
"fp32" means what it says.

Every engine ``X.engine`` has a sidecar ``X.engine.json`` (``SIDECAR_FORMAT``): flavour and version of
TensorRT, target compute capability, precision, shapes, the source ONNX's sha256, the builder settings
and the layer-precision report. ``check_engine`` compares the sidecar with the engine file, the installed
TensorRT, the current GPU and the source ONNX before anything is deserialised: a TensorRT engine loaded
on another GPU or TensorRT version fails in obscure ways, or silently runs slower kernels.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, UserError, VerificationError
from ..fileio import atomic_write_bytes, read_json, sha256_file, write_json
from ..validation import Fields, is_compute_capability, is_file_name, is_int, is_number, is_sha256, is_text
from .onnx_export import INPUT_NAME, OUTPUT_NAME, read_metadata, verify_onnx_file

SIDECAR_FORMAT = "resnet-deploy/tensorrt-engine"
SIDECAR_VERSION = 1
FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
FLAVOUR_ENV = "RESNET_DEPLOY_TENSORRT_FLAVOUR"  # "tensorrt" or "tensorrt-rtx" to force one
INSTALL_HINT = (
    "pip install tensorrt   (NVIDIA TensorRT, on a machine with an NVIDIA GPU), or "
    'pip install "resnet-deploy[tensorrt]"   (TensorRT-RTX: tensorrt-rtx-cu13-libs and tensorrt-rtx-cu13-bindings, '
    "builds engines without a GPU for --compute-capability)"
)
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_SHAPE = (3, 32, 32)


# --------------------------------------------------------------------------------------------- import


def import_tensorrt() -> tuple[Any, str, str]:
    """The TensorRT Python module to use: ``(module, flavour, version)``.

    Full TensorRT wins over TensorRT-RTX when both import; ``RESNET_DEPLOY_TENSORRT_FLAVOUR`` set to
    ``tensorrt`` or ``tensorrt-rtx`` forces one. Raises MissingDependencyError (exit 2) naming what to
    install when neither imports.
    """
    forced = os.environ.get(FLAVOUR_ENV, "").strip().lower()
    if forced and forced not in FLAVOURS:
        raise UserError(f"{FLAVOUR_ENV}={forced!r} is not a TensorRT flavour; use one of {', '.join(FLAVOURS)}")
    order = [forced] if forced else list(FLAVOURS)
    reasons = []
    for flavour in order:
        module_name = FLAVOURS[flavour]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            reasons.append(f"{module_name}: {exc}")
            continue
        except OSError as exc:  # the bindings import but their shared libraries do not load
            reasons.append(f"{module_name}: {exc}")
            continue
        return module, flavour, str(getattr(module, "__version__", "unknown"))
    error = MissingDependencyError(
        "TensorRT" if not forced else forced,
        INSTALL_HINT,
        "building and loading TensorRT engines",
    )
    error.reasons = reasons  # type: ignore[attr-defined]
    raise error


def tensorrt_available() -> tuple[bool, str]:
    """(True, "tensorrt-rtx 1.7.1.116") or (False, why not) without raising."""
    try:
        _, flavour, version = import_tensorrt()
    except UserError as exc:
        return False, str(exc).splitlines()[0]
    return True, f"{flavour} {version}"


# --------------------------------------------------------------------------------------------- GPU


def current_gpu() -> dict | None:
    """{"name", "compute_capability": "8.6"} of CUDA device 0, or None without a usable GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # a broken driver is "no GPU" for our purposes
        return None


def parse_compute_capability(text: str) -> str:
    """'8.6', '86', 'sm86', 'SM_86' -> '8.6'."""
    cleaned = str(text).strip().lower().removeprefix("sm").lstrip("_")
    if "." in cleaned:
        major, _, minor = cleaned.partition(".")
    else:
        major, minor = cleaned[:-1], cleaned[-1:]
    if not (major.isdigit() and minor.isdigit()):
        raise UserError(f"--compute-capability {text!r} is not a compute capability; write it like 8.6 or sm86")
    return f"{int(major)}.{int(minor)}"


def _rtx_compute_capability(trt, capability: str):
    name = "SM" + capability.replace(".", "")
    known = [c for c in dir(trt.ComputeCapability) if c.startswith("SM")]
    if name not in known:
        choices = ", ".join(f"{c[2:-1]}.{c[-1]}" for c in known)
        raise UserError(
            f"--compute-capability {capability} is not a target of TensorRT-RTX {trt.__version__}; choose one of {choices}",
            hint="TensorRT-RTX targets RTX GPUs (Turing and later consumer/workstation parts); "
            "for data-centre GPUs such as the H100 (9.0) use full TensorRT on that machine",
        )
    return getattr(trt.ComputeCapability, name)


# --------------------------------------------------------------------------------------------- logging


def _make_logger(trt):
    """A TensorRT logger that keeps warnings and errors, so failures can be reported with TensorRT's words."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg) -> None:  # noqa: D401 - TensorRT's callback
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append((str(severity).rsplit(".", 1)[-1], str(msg)))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return CollectingLogger()


# --------------------------------------------------------------------------------------------- build


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".json")


def layer_report_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".layers.json")


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise UserError(
            f"batch range must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got {min_batch}/{opt_batch}/{max_batch}"
        )


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
    ``opt_batch``; a static-shape ONNX needs all three equal to its batch. ``workspace_mb`` caps the
    builder's scratch memory, ``opt_level`` is the builder optimisation level (0-5; higher searches
    longer for faster kernels). ``timing_cache``: a file read before and written after the build so
    later builds reuse measured tactics (full TensorRT; TensorRT-RTX ignores it).
    ``compute_capability`` (e.g. "8.6"): the target GPU; default the current GPU. TensorRT-RTX can build
    for a named one without a GPU; full TensorRT only builds for the GPU it runs on.
    """
    if precision not in ENGINE_PRECISIONS:
        raise UserError(f"engine precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {precision!r}")
    _check_batches(min_batch, opt_batch, max_batch)
    if workspace_mb < 16:
        raise UserError(f"--workspace-mb must be at least 16, got {workspace_mb}")
    if not 0 <= opt_level <= 5:
        raise UserError(f"--opt-level must be 0..5, got {opt_level}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model_proto = verify_onnx_file(onnx_path)
    metadata = read_metadata(model_proto)
    onnx_precision = metadata.get("precision")
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
    if static_batch is not None and not (min_batch == opt_batch == max_batch == static_batch):
        raise UserError(
            f"{onnx_path} has a static batch of {static_batch}; the engine's --min/--opt/--max-batch must all be {static_batch}"
        )

    trt, flavour, version = import_tensorrt()
    gpu = current_gpu()
    target = _resolve_target(trt, flavour, gpu, compute_capability)
    logger = _make_logger(trt)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    if builder is None:
        raise UserError(f"{flavour} {version} could not create a builder: {'; '.join(logger.errors()) or 'no CUDA device?'}")
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and not strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # TensorRT 8.x
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors()
        raise VerificationError(f"{flavour} {version} rejected {onnx_path.name}: " + " | ".join(e.strip() for e in errors[:5]))
    network_report = network_layer_report(trt, network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.builder_optimization_level = opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the engine inspector name layer precisions
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly_typed:  # TensorRT 8.x: precision by builder flags
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if flavour == "tensorrt-rtx":
        config.num_compute_capabilities = 1
        cc_enum = trt.ComputeCapability.CURRENT if target["current_gpu"] else _rtx_compute_capability(trt, target["compute_capability"])
        if not config.set_compute_capability(cc_enum, 0):
            raise UserError(f"TensorRT-RTX refused compute capability {target['compute_capability']}")

    input_tensor = network.get_input(0)
    if input_tensor.name != INPUT_NAME:
        raise UserError(f"{onnx_path} input is {input_tensor.name!r}, expected {INPUT_NAME!r}")
    shapes = {
        "min": [min_batch, *IMAGE_SHAPE],
        "opt": [opt_batch, *IMAGE_SHAPE],
        "max": [max_batch, *IMAGE_SHAPE],
    }
    if static_batch is None:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)

    cache_info = _load_timing_cache(trt, flavour, config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VerificationError(
            f"{flavour} {version} could not build a {precision} engine from {onnx_path.name}: "
            + (" | ".join(logger.errors()[:5]) or "no error message")
        )
    plan = bytes(serialized)
    build_seconds = time.perf_counter() - start
    cache_info = _save_timing_cache(flavour, config, timing_cache, cache_info)

    atomic_write_bytes(engine_path, plan)
    output_tensor = network.get_output(0)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "flavour": flavour,
        "tensorrt_version": version,
        "precision": precision,
        "target": target,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "shapes": {
            INPUT_NAME: shapes,
            OUTPUT_NAME: [-1 if static_batch is None else static_batch, int(output_tensor.shape[1])],
        },
        "min_batch": min_batch,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
        "dynamic_batch": static_batch is None,
        "engine": {"file": engine_path.name, "sha256": sha256_file(engine_path), "bytes": len(plan)},
        "onnx": {"file": os.path.relpath(onnx_path.resolve(), engine_path.parent.resolve()), "sha256": sha256_file(onnx_path),
                 "scheme": metadata.get("scheme") or None},
        "builder": {
            "strongly_typed": strongly_typed,
            "workspace_mb": workspace_mb,
            "optimization_level": opt_level,
            "tf32": precision != "fp32",
            "timing_cache": cache_info,
        },
        "build_seconds": round(build_seconds, 3),
        "layer_precision": network_report["summary"],
        "layer_report": layer_report_path(engine_path).name,
    }
    if target["current_gpu"]:
        network_report["engine_inspector"] = _inspect_built_engine(trt, logger, plan)
    write_json(layer_report_path(engine_path), network_report)
    write_json(sidecar_path(engine_path), sidecar)
    if precision == "int8" and network_report["summary"]["quantized_convolutions"] == 0:
        raise VerificationError(f"{onnx_path.name}: no convolution has Q/DQ inputs, so the int8 engine would not run int8 kernels")
    return sidecar


def _static_batch(model_proto) -> int | None:
    dim = model_proto.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def _resolve_target(trt, flavour: str, gpu: dict | None, compute_capability: str | None) -> dict:
    wanted = parse_compute_capability(compute_capability) if compute_capability else None
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
        _rtx_compute_capability(trt, wanted)  # validates it is a known target
    return {"compute_capability": wanted, "gpu_name": gpu["name"] if use_current else None, "current_gpu": use_current}


def _load_timing_cache(trt, flavour: str, config, timing_cache) -> dict | None:
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


def _save_timing_cache(flavour: str, config, timing_cache, info: dict | None) -> dict | None:
    if timing_cache is None or flavour == "tensorrt-rtx" or info is None:
        return info
    serialized = config.get_timing_cache().serialize()
    data = bytes(serialized)
    atomic_write_bytes(timing_cache, data)
    return {**info, "written_bytes": len(data)}


# --------------------------------------------------------------------------------------------- reports


def network_layer_report(trt, network) -> dict:
    """Per-layer types of the parsed (strongly typed) network, before TensorRT fuses anything.

    A convolution whose activation and weight inputs both come from DequantizeLinear is counted as
    quantized: in explicit quantization TensorRT fuses exactly that pattern into an int8 kernel. This
    report needs no GPU; ``engine_layer_report`` gives the built engine's own view when one is present.
    """
    producers: dict[str, Any] = {}
    layers = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for out in range(layer.num_outputs):
            producers[layer.get_output(out).name] = layer
    quantized_convs = 0
    conv_count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        kind = str(layer.type).rsplit(".", 1)[-1]
        inputs = []
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            if tensor is None:
                continue
            source = producers.get(tensor.name)
            inputs.append(
                {"dtype": str(tensor.dtype).rsplit(".", 1)[-1], "from": str(source.type).rsplit(".", 1)[-1] if source else "input"}
            )
        outputs = [str(layer.get_output(i).dtype).rsplit(".", 1)[-1] for i in range(layer.num_outputs)]
        entry = {"name": layer.name, "type": kind, "inputs": inputs, "outputs": outputs}
        if kind in ("CONVOLUTION", "MATRIX_MULTIPLY"):
            conv_count += kind == "CONVOLUTION"
            dq_inputs = [inp for inp in inputs if inp["from"] == "DEQUANTIZE"]
            entry["quantized"] = len(dq_inputs) >= 2 or (kind == "CONVOLUTION" and len(dq_inputs) >= 1 and len(inputs) == 1)
            quantized_convs += bool(entry["quantized"]) and kind == "CONVOLUTION"
        layers.append(entry)
    by_type = Counter(f"{layer['type']}:{layer['outputs'][0] if layer['outputs'] else '-'}" for layer in layers)
    return {
        "source": "network definition (before fusion)",
        "summary": {
            "layers": len(layers),
            "convolutions": conv_count,
            "quantized_convolutions": quantized_convs,
            "quantize_layers": sum(1 for layer in layers if layer["type"] == "QUANTIZE"),
            "dequantize_layers": sum(1 for layer in layers if layer["type"] == "DEQUANTIZE"),
            "by_type_and_output_dtype": dict(sorted(by_type.items())),
        },
        "layers": layers,
    }


def _inspect_built_engine(trt, logger, plan: bytes) -> dict:
    """On the target GPU: the engine inspector's per-layer view (fused layers and their precisions)."""
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            return {"error": " | ".join(logger.errors()[:3]) or "deserialization failed"}
        inspector = engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as exc:  # the report is informative; a failure here must not lose the engine
        return {"error": f"{type(exc).__name__}: {exc}"}


def engine_layer_report(engine) -> dict:
    """The built engine's own layer list (fused layers, chosen precisions, tactics) via the engine
    inspector. Needs a deserialised engine, so a GPU."""
    import_trt, _, _ = import_tensorrt()
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(import_trt.LayerInformationFormat.JSON)
    return json.loads(info)


# --------------------------------------------------------------------------------------------- load


def read_sidecar(engine_path: str | os.PathLike) -> dict:
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise UserError(
            f"engine {engine_path} has no sidecar {path.name}: its TensorRT version, target GPU and source are unknown",
            hint="build engines with resnet-deploy export / build-engine, which writes the sidecar",
        )
    sidecar = read_json(path, "engine sidecar")
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{path} is not a resnet-deploy engine sidecar (no '{SIDECAR_FORMAT}' format tag)")
    for key in ("flavour", "tensorrt_version", "precision", "target", "engine", "onnx", "shapes"):
        if key not in sidecar:
            raise UserError(f"engine sidecar {path} lacks {key!r}")
    version = sidecar.get("version", SIDECAR_VERSION)
    if is_int(version) and version > SIDECAR_VERSION:
        raise UserError(f"engine sidecar {path} was written by a newer resnet-deploy (sidecar version {version})")
    _validate_sidecar(sidecar, path)
    return sidecar


def _validate_sidecar(sidecar: dict, path: Path) -> None:
    """The nested fields ``check_engine``, the TensorRT runner and ``check-engine`` read: refused with
    the field named when one has the wrong type, instead of a KeyError or TypeError deep in the check."""
    fields = Fields(f"engine sidecar {path}", hint="rebuild the engine with resnet-deploy export / build-engine, which writes the sidecar")
    fields.check(is_int(sidecar.get("version", SIDECAR_VERSION), 1), "version", f"a version number (1..{SIDECAR_VERSION})")
    fields.check(sidecar["flavour"] in FLAVOURS if isinstance(sidecar["flavour"], str) else False, "flavour", f"one of {', '.join(FLAVOURS)}")
    fields.check(is_text(sidecar["tensorrt_version"]), "tensorrt_version", "a version string")
    fields.check(sidecar["precision"] in ENGINE_PRECISIONS if isinstance(sidecar["precision"], str) else False,
                 "precision", f"one of {', '.join(ENGINE_PRECISIONS)}")
    target = fields.dict(sidecar, "target")
    if target:
        fields.check(is_compute_capability(target.get("compute_capability")), "target.compute_capability", "a compute capability such as 8.6")
        fields.check(target.get("gpu_name") is None or isinstance(target["gpu_name"], str), "target.gpu_name", "null or a GPU name")
        fields.check(isinstance(target.get("current_gpu", False), bool), "target.current_gpu", "true or false")
    engine = fields.dict(sidecar, "engine")
    if engine:
        fields.check(is_file_name(engine.get("file")), "engine.file", "the engine's file name")
        fields.check(is_sha256(engine.get("sha256")), "engine.sha256", "a sha256 hex digest")
        fields.check(is_int(engine.get("bytes", 0), 0), "engine.bytes", "a size in bytes")
    onnx = fields.dict(sidecar, "onnx")
    if onnx:
        fields.check(is_text(onnx.get("file")), "onnx.file", "the path of the source ONNX, relative to the engine")
        fields.check(is_sha256(onnx.get("sha256")), "onnx.sha256", "a sha256 hex digest")
        fields.check(onnx.get("scheme") is None or isinstance(onnx["scheme"], str), "onnx.scheme", "null or an int8 scheme")
    shapes = fields.dict(sidecar, "shapes")
    input_name, output_name = sidecar.get("input_name", INPUT_NAME), sidecar.get("output_name", OUTPUT_NAME)
    if fields.check(is_text(input_name) and is_text(output_name), "input_name/output_name", "tensor names") and shapes:
        profile = shapes.get(input_name)
        fields.check(
            isinstance(profile, dict) and all(_is_shape(profile.get(key), 4, 1) for key in ("min", "opt", "max")),
            f"shapes.{input_name}", "{min, opt, max} input shapes of 4 positive sizes",
        )
        fields.check(_is_shape(shapes.get(output_name), 2, -1), f"shapes.{output_name}", "an output shape of 2 sizes")
    batches = [sidecar.get(key) for key in ("min_batch", "opt_batch", "max_batch")]
    if any(b is not None for b in batches):
        if fields.check(all(is_int(b, 1) for b in batches), "min_batch/opt_batch/max_batch", "batch sizes"):
            fields.check(batches[0] <= batches[1] <= batches[2], "min_batch/opt_batch/max_batch", "in order min <= opt <= max")
    fields.check(isinstance(sidecar.get("dynamic_batch", True), bool), "dynamic_batch", "true or false")
    fields.check(sidecar.get("build_seconds") is None or is_number(sidecar["build_seconds"]), "build_seconds", "a number")
    for key in ("builder", "layer_precision"):
        fields.check(isinstance(sidecar.get(key, {}), dict), key, "an object")
    fields.raise_if_any()


def _is_shape(value: Any, rank: int, smallest: int) -> bool:
    return isinstance(value, list) and len(value) == rank and all(is_int(v, smallest) for v in value)


def check_engine(engine_path: str | os.PathLike, onnx_path: str | os.PathLike | None = None) -> dict:
    """Check that an engine can be loaded here and is what its sidecar says; return the sidecar.

    UserError, before anything is deserialised, when: the engine or sidecar is missing; the engine's
    sha256 differs from the sidecar's; the installed TensorRT flavour or version differs from the one
    that built it; a GPU is present and its compute capability is not the engine's target; the source
    ONNX (``onnx_path``, default the file the sidecar names, when it exists) changed since the build.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise UserError(f"TensorRT engine not found: {engine_path}")
    sidecar = read_sidecar(engine_path)
    digest = sha256_file(engine_path)
    if digest != sidecar["engine"]["sha256"]:
        raise UserError(
            f"engine {engine_path} does not match its sidecar (sha256 {digest[:12]}..., sidecar says "
            f"{sidecar['engine']['sha256'][:12]}...): it was rebuilt, replaced or corrupted",
            hint="rebuild the engine with resnet-deploy export --tensorrt",
        )
    _, flavour, version = import_tensorrt()
    if flavour != sidecar["flavour"] or version != sidecar["tensorrt_version"]:
        raise UserError(
            f"engine {engine_path.name} was built with {sidecar['flavour']} {sidecar['tensorrt_version']}, "
            f"but {flavour} {version} is installed; TensorRT engines only load in the exact version that built them",
            hint="rebuild the engine here, or install the version that built it",
        )
    gpu = current_gpu()
    target_cc = sidecar["target"].get("compute_capability")
    if gpu is not None and target_cc and gpu["compute_capability"] != target_cc:
        raise UserError(
            f"engine {engine_path.name} was built for compute capability {target_cc}, but this GPU "
            f"({gpu['name']}) is {gpu['compute_capability']}",
            hint=f"rebuild it here (resnet-deploy build-engine ... --compute-capability {gpu['compute_capability']})",
        )
    if onnx_path is None:
        recorded = (engine_path.parent / sidecar["onnx"]["file"]).resolve()
        onnx_path = recorded if recorded.is_file() else None
    if onnx_path is not None:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise UserError(f"source ONNX {onnx_path} of engine {engine_path.name} not found")
        onnx_digest = sha256_file(onnx_path)
        if onnx_digest != sidecar["onnx"]["sha256"]:
            raise UserError(
                f"engine {engine_path.name} was built from another ONNX file than {onnx_path} "
                f"(sha256 {onnx_digest[:12]}..., engine built from {sidecar['onnx']['sha256'][:12]}...)",
                hint="the ONNX changed after the engine was built: rebuild the engine",
            )
    return sidecar


_RUNTIMES: dict[str, Any] = {}


def deserialize_engine(engine_path: str | os.PathLike):
    """``check_engine``, then ``Runtime.deserialize_cuda_engine``: the ICudaEngine, ready for contexts.

    The runtime that deserialised an engine must outlive it, so one runtime per flavour is kept for the
    life of the process.
    """
    sidecar = check_engine(engine_path)
    trt, flavour, version = import_tensorrt()
    if current_gpu() is None:
        raise UserError(
            f"engine {Path(engine_path).name} (for compute capability {sidecar['target'].get('compute_capability')}) "
            "cannot run here: no CUDA GPU was found"
        )
    if flavour not in _RUNTIMES:
        logger = _make_logger(trt)
        _RUNTIMES[flavour] = (trt.Runtime(logger), logger)
    runtime, logger = _RUNTIMES[flavour]
    logger.messages.clear()
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise UserError(
            f"{flavour} {version} could not deserialize {engine_path}: " + (" | ".join(logger.errors()[:3]) or "no message")
        )
    return engine
