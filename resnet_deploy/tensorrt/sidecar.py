"""The engine sidecar: what an engine was built from and for, written beside it and checked before load.

Every engine ``X.engine`` has a sidecar ``X.engine.json`` (``SIDECAR_FORMAT``): flavour and version of
TensorRT, target compute capability, precision, shapes, the source ONNX's sha256, the builder settings
and the layer-precision report (details in ``X.engine.layers.json``). ``check_engine`` compares the
sidecar with the engine file, the installed TensorRT, the current GPU and the source ONNX before
anything is deserialised: a TensorRT engine loaded on another GPU or TensorRT version fails in obscure
ways, or silently runs slower kernels.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import read_json, sha256_file
from ..onnx_file import INPUT_NAME, OUTPUT_NAME
from ..validation import Fields, is_compute_capability, is_file_name, is_int, is_number, is_sha256, is_text
from . import runtime
from .settings import ENGINE_PRECISIONS, BuildSettings

SIDECAR_FORMAT = "resnet-deploy/tensorrt-engine"
SIDECAR_VERSION = 1
REBUILD_HINT = "rebuild the engine with resnet-deploy export / build-engine, which writes the sidecar"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".json")


def layer_report_path(engine_path: str | os.PathLike) -> Path:
    return Path(str(engine_path) + ".layers.json")


@dataclass(frozen=True)
class EngineBuild:
    """What one build produced and from what, as the sidecar records it."""

    settings: BuildSettings
    onnx_path: Path
    scheme: str | None  # the int8 scheme of the source ONNX, None for float
    static_batch: int | None
    engine_path: Path
    engine_bytes: int
    classes: int  # the output's second dimension
    flavour: str
    version: str
    target: dict  # {"compute_capability", "gpu_name", "current_gpu"}
    strongly_typed: bool
    timing_cache: dict | None
    build_seconds: float
    layer_summary: dict


def new_sidecar(build: EngineBuild) -> dict:
    """The sidecar of a freshly written engine (its sha256 read back from the file)."""
    settings, batches = build.settings, build.settings.batches
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "flavour": build.flavour,
        "tensorrt_version": build.version,
        "precision": settings.precision,
        "target": build.target,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "shapes": {
            INPUT_NAME: batches.input_shapes(),
            OUTPUT_NAME: [-1 if build.static_batch is None else build.static_batch, build.classes],
        },
        "min_batch": batches.min,
        "opt_batch": batches.opt,
        "max_batch": batches.max,
        "dynamic_batch": build.static_batch is None,
        "engine": {"file": build.engine_path.name, "sha256": sha256_file(build.engine_path), "bytes": build.engine_bytes},
        "onnx": {"file": os.path.relpath(build.onnx_path.resolve(), build.engine_path.parent.resolve()),
                 "sha256": sha256_file(build.onnx_path), "scheme": build.scheme},
        "builder": {
            "strongly_typed": build.strongly_typed,
            "workspace_mb": settings.workspace_mb,
            "optimization_level": settings.opt_level,
            "tf32": settings.precision != "fp32",
            "timing_cache": build.timing_cache,
        },
        "build_seconds": round(build.build_seconds, 3),
        "layer_precision": build.layer_summary,
        "layer_report": layer_report_path(build.engine_path).name,
    }


# --------------------------------------------------------------------------------------------- read back


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


def _one_of(value: Any, choices) -> bool:
    return isinstance(value, str) and value in choices


def _validate_sidecar(sidecar: dict, path: Path) -> None:
    """The nested fields ``check_engine``, the TensorRT runner and ``check-engine`` read: refused with
    the field named when one has the wrong type, instead of a KeyError or TypeError deep in the check."""
    fields = Fields(f"engine sidecar {path}", hint=REBUILD_HINT)
    fields.check(is_int(sidecar.get("version", SIDECAR_VERSION), 1), "version", f"a version number (1..{SIDECAR_VERSION})")
    fields.check(_one_of(sidecar["flavour"], runtime.FLAVOURS), "flavour", f"one of {', '.join(runtime.FLAVOURS)}")
    fields.check(is_text(sidecar["tensorrt_version"]), "tensorrt_version", "a version string")
    fields.check(_one_of(sidecar["precision"], ENGINE_PRECISIONS), "precision", f"one of {', '.join(ENGINE_PRECISIONS)}")
    _validate_target_engine_onnx(fields, sidecar)
    _validate_shapes(fields, sidecar)
    fields.check(isinstance(sidecar.get("dynamic_batch", True), bool), "dynamic_batch", "true or false")
    fields.check(sidecar.get("build_seconds") is None or is_number(sidecar["build_seconds"]), "build_seconds", "a number")
    for key in ("builder", "layer_precision"):
        fields.check(isinstance(sidecar.get(key, {}), dict), key, "an object")
    fields.raise_if_any()


def _validate_target_engine_onnx(fields: Fields, sidecar: dict) -> None:
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


def _validate_shapes(fields: Fields, sidecar: dict) -> None:
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


def _is_shape(value: Any, rank: int, smallest: int) -> bool:
    return isinstance(value, list) and len(value) == rank and all(is_int(v, smallest) for v in value)


# --------------------------------------------------------------------------------------------- check before load


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
    _check_engine_file(engine_path, sidecar)
    _check_built_for_here(engine_path, sidecar)
    _check_source_onnx(engine_path, sidecar, onnx_path)
    return sidecar


def _check_engine_file(engine_path: Path, sidecar: dict) -> None:
    digest = sha256_file(engine_path)
    if digest != sidecar["engine"]["sha256"]:
        raise UserError(
            f"engine {engine_path} does not match its sidecar (sha256 {digest[:12]}..., sidecar says "
            f"{sidecar['engine']['sha256'][:12]}...): it was rebuilt, replaced or corrupted",
            hint="rebuild the engine with resnet-deploy export --tensorrt",
        )


def _check_built_for_here(engine_path: Path, sidecar: dict) -> None:
    """The installed TensorRT is the one that built the engine, and a GPU here is its target."""
    _, flavour, version = runtime.import_tensorrt()
    if flavour != sidecar["flavour"] or version != sidecar["tensorrt_version"]:
        raise UserError(
            f"engine {engine_path.name} was built with {sidecar['flavour']} {sidecar['tensorrt_version']}, "
            f"but {flavour} {version} is installed; TensorRT engines only load in the exact version that built them",
            hint="rebuild the engine here, or install the version that built it",
        )
    gpu = runtime.current_gpu()
    target_cc = sidecar["target"].get("compute_capability")
    if gpu is not None and target_cc and gpu["compute_capability"] != target_cc:
        raise UserError(
            f"engine {engine_path.name} was built for compute capability {target_cc}, but this GPU "
            f"({gpu['name']}) is {gpu['compute_capability']}",
            hint=f"rebuild it here (resnet-deploy build-engine ... --compute-capability {gpu['compute_capability']})",
        )


def _check_source_onnx(engine_path: Path, sidecar: dict, onnx_path: str | os.PathLike | None) -> None:
    if onnx_path is None:
        recorded = (engine_path.parent / sidecar["onnx"]["file"]).resolve()
        onnx_path = recorded if recorded.is_file() else None
    if onnx_path is None:
        return
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
