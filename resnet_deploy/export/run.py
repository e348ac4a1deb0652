"""``export_checkpoint``: everything ``resnet-deploy export`` does, as one library call.

checkpoint -> FP32 ONNX (+ FP16, + int8 from a quantize artifact) -> parity with ONNX Runtime ->
TensorRT engines (when a TensorRT module is importable) -> ``manifest.json``.

The manifest is written even when a check fails, with ``passed: false`` on the failing artifact, so the
numbers that failed can be read; the call then raises VerificationError naming every failed check.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint import LoadedModel, check_dataset_matches, load_checkpoint
from ..data import ImageDataset
from ..errors import UserError, VerificationError
from ..fileio import ensure_writable_dir, remove_stale_temporaries
from ..run_names import check_export_name, export_run_name
from . import manifest as manifest_lib
from .onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, ExportInfo, check_opset, export_onnx
from .parity import FIXED_BATCH_SIZE, ExactQDQReference, ParityInputs, check_parity, describe_failure, fixed_batch
from ..tensorrt import BatchRange, build_engine, parse_compute_capability, runtime, sidecar_path

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    """Options of one export run (the CLI's flags, one to one)."""

    checkpoint: Path
    output_dir: Path = Path("exports")
    name: str | None = None
    fp16: bool = False
    int8_dir: Path | None = None
    static_batch: int | None = None
    opset: int = DEFAULT_OPSET
    tensorrt: bool | None = None  # None: build engines when a TensorRT module imports and can target something
    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256
    workspace_mb: int = 1024
    opt_level: int = 3
    compute_capability: str | None = None
    timing_cache: Path | None = None  # default: <output_dir>/tensorrt-timing.cache
    dataset: ImageDataset | None = None
    parity_images: int | None = None  # cap on the int8 held-out set (default: the whole test split)
    fixed_batch_size: int = FIXED_BATCH_SIZE
    simplify: bool = True
    threads: int | None = None
    loaded: LoadedModel | None = None  # ``checkpoint`` already loaded (the CLI's, for its overwrite check): not read again


@dataclass
class ExportReport:
    export_dir: Path
    manifest_path: Path
    manifest: dict
    failures: list[str] = field(default_factory=list)


def export_checkpoint(options: ExportOptions) -> ExportReport:
    """Run the whole export; see the module docstring. Returns the report; raises VerificationError
    (after writing the manifest) when a parity or graph check failed."""
    options = _checked_options(options)
    loaded = options.loaded or load_checkpoint(options.checkpoint)
    export_dir = _prepare_export_dir(options, loaded)
    if options.dataset is not None:
        check_dataset_matches(loaded, options.dataset.classes, options.dataset.name)
    quantized = _load_int8(options) if options.int8_dir is not None else None  # fail fast, before minutes of export
    engine_plan = _plan_tensorrt(options)

    manifest = manifest_lib.new_manifest(
        checkpoint_path=Path(options.checkpoint).resolve(),
        checkpoint_sha256=loaded.sha256,
        spec=loaded.spec.to_dict(),
        normalization=loaded.normalization.to_dict(),
        classes=loaded.classes,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    failures: list[str] = []
    batch_tag = "" if options.static_batch is None else f"-b{options.static_batch}"
    _export_float(options, loaded, manifest, export_dir, batch_tag, failures)
    if quantized is not None:
        _export_int8(options, quantized, loaded, manifest, export_dir, batch_tag, failures)
    if engine_plan["build"]:
        _build_engines(options, manifest, export_dir, engine_plan)
    else:
        manifest_lib.add_skipped(manifest, "tensorrt", None, engine_plan["reason"])
        log.info(f"TensorRT engines skipped: {engine_plan['reason']}")

    manifest_path = manifest_lib.write_manifest(export_dir, manifest)
    report = ExportReport(export_dir, manifest_path, manifest, failures)
    if failures:
        raise VerificationError(
            f"{len(failures)} export check(s) failed (manifest written to {manifest_path}):\n  " + "\n  ".join(failures)
        )
    return report


def _checked_options(options: ExportOptions) -> ExportOptions:
    """The options' own checks, before anything is read; the compute capability parsed once, into a
    copy (the caller's options are left as they were)."""
    check_opset(options.opset)
    if options.static_batch is not None and options.static_batch < 1:
        raise UserError(f"--static-batch must be >= 1, got {options.static_batch}")
    if options.compute_capability:
        options = dataclasses.replace(options, compute_capability=parse_compute_capability(options.compute_capability))
    return options


def _prepare_export_dir(options: ExportOptions, loaded) -> Path:
    """exports/<name>/, writable, with the temporaries of a killed export removed."""
    name = check_export_name(options.name or export_run_name(options.checkpoint, loaded.spec.name))
    export_dir = ensure_writable_dir(Path(options.output_dir) / name, what="export directory")
    remove_stale_temporaries(export_dir)  # left by a killed export; the directory is ours alone
    return export_dir


def _export_float(options: ExportOptions, loaded, manifest: dict, export_dir: Path, batch_tag: str,
                  failures: list[str]) -> None:
    """FP32 (and with --fp16 FP16) ONNX, each checked against the PyTorch FP32 model on a fixed batch."""
    dataset = options.dataset
    test_images = dataset.test_images if dataset is not None else None
    float_inputs = fixed_batch(loaded.normalization, options.fixed_batch_size, test_images,
                               f"first {options.fixed_batch_size} {dataset.name} test images" if dataset is not None else None)
    if options.static_batch is not None:
        float_inputs = _pad_to_multiple(float_inputs, options.static_batch)

    def reference_fp32(batch):
        return loaded.model(batch)

    spec = loaded.spec.to_dict()
    for precision in ["fp32"] + (["fp16"] if options.fp16 else []):
        info = ExportInfo(spec, loaded.normalization.to_dict(), loaded.classes, loaded.sha256, precision)
        path = export_dir / f"model-{precision}{batch_tag}.onnx"
        log.info(f"exporting {precision} ONNX -> {path}")
        result = export_onnx(loaded.model, path, info, dynamic_batch=options.static_batch is None,
                             static_batch=options.static_batch, opset=options.opset, simplify=options.simplify)
        parity = check_parity(path, reference_fp32, float_inputs, precision, batch_size=_parity_batch(options),
                              threads=options.threads)
        _record_onnx(manifest, export_dir, result, parity, failures)


def _parity_batch(options: ExportOptions) -> int:
    return options.static_batch or 256


def _pad_to_multiple(inputs: ParityInputs, batch: int) -> ParityInputs:
    """A static-shape model only takes batches of exactly ``batch``: trim (or repeat) the images to a multiple."""
    count = max(batch, (len(inputs) // batch) * batch)
    reps = int(np.ceil(count / len(inputs)))
    images = np.concatenate([inputs.images] * reps)[:count]
    labels = None if inputs.labels is None else np.concatenate([inputs.labels] * reps)[:count]
    return ParityInputs(images, inputs.normalization, inputs.source + f" (as {count // batch} batches of {batch})", labels)


def _record_onnx(manifest: dict, export_dir: Path, result, parity: dict, failures: list[str], extra: dict | None = None) -> dict:
    entry = {
        "kind": "onnx",
        "precision": result.precision,
        "scheme": result.scheme,
        "path": manifest_lib.relative_to(export_dir, result.path),
        "sha256": result.sha256,
        "dynamic_batch": result.dynamic_batch,
        "static_batch": result.static_batch,
        "opset": result.opset,
        "simplifier": result.simplifier,
        "export_seconds": result.export_seconds,
        "op_counts": result.op_counts,
        **(extra or {}),
        "parity": parity,
    }
    manifest_lib.add_artifact(manifest, entry)
    label = f"{result.precision}" + (f" ({result.scheme})" if result.scheme else "")
    if parity["passed"]:
        log.info(
            f"  {label} parity ok: max|diff| {parity['max_abs_diff']:.2e}, top-1 agreement "
            f"{parity['top1_agreement']:.2f}% on {parity['count']} inputs"
        )
    else:
        failures.append(f"{label} ONNX: " + describe_failure(entry["path"], parity) + (f"\n    hint: {parity['hint']}" if parity.get("hint") else ""))
    return entry


def _load_int8(options: ExportOptions):
    """The quantize artifact, checked against the checkpoint; int8 parity also needs held-out data."""
    from ..quantize import load_quantized

    if options.dataset is None:
        raise UserError(
            "int8 parity runs on held-out test images: pass --data-dir (and --dataset) with --int8",
            hint="the int8 ONNX is compared with the PyTorch int8 model on the test split, which calibration never saw",
        )
    quantized = load_quantized(options.int8_dir, checkpoint=options.checkpoint)  # registers the quantize ops first
    if list(quantized.classes) and list(quantized.classes) != list(options.dataset.classes):
        raise UserError(f"{options.int8_dir} was quantized for classes {list(quantized.classes)[:4]}..., not {options.dataset.name}'s")
    return quantized


def _export_int8(options: ExportOptions, quantized, loaded, manifest: dict, export_dir: Path, batch_tag: str,
                 failures: list[str]) -> None:
    """The int8 ONNX of the quantize artifact, its Q/DQ graph checked for the target's runtime and its
    logits compared with the int8 PyTorch model on held-out test images."""
    held_out = _held_out_inputs(options, quantized)
    manifest["quantization"] = {
        "artifact_dir": str(Path(quantized.artifact_dir).resolve()),
        "target": quantized.target,
        "checkpoint_sha256": quantized.checkpoint_sha256,
        "residual_conv_input": quantized.residual_conv_input,
    }
    info = ExportInfo(
        quantized.spec.to_dict() if hasattr(quantized.spec, "to_dict") else dict(quantized.spec),
        quantized.normalization.to_dict(), list(quantized.classes), loaded.sha256, "int8", quantized.target,
    )
    path = export_dir / f"model-int8-{quantized.target}{batch_tag}.onnx"
    log.info(f"exporting int8 ({quantized.target} scheme) ONNX -> {path}")
    result = export_onnx(quantized.module, path, info, dynamic_batch=options.static_batch is None,
                         static_batch=options.static_batch, opset=options.opset, simplify=options.simplify)
    analysis, kernels, problems = _check_qdq_graph(path, quantized.target)
    parity = _int8_parity(options, path, quantized, held_out, analysis)
    if problems:
        parity = {**parity, "passed": False, "failures": parity["failures"] + problems}
    _record_onnx(manifest, export_dir, result, parity, failures, {"qdq": analysis, "onnxruntime_kernels": kernels})


def _held_out_inputs(options: ExportOptions, quantized) -> ParityInputs:
    """The test split (capped at --parity-images), which calibration never saw."""
    dataset = options.dataset
    count = min(len(dataset.test_images), options.parity_images or len(dataset.test_images))
    held_out = ParityInputs(
        dataset.test_images[:count], quantized.normalization, f"{count} held-out {dataset.name} test images",
        dataset.test_labels[:count],
    )
    if options.static_batch is not None:
        held_out = _pad_to_multiple(held_out, options.static_batch)
    return held_out


def _check_qdq_graph(path: Path, target: str) -> tuple[dict, dict, list[str]]:
    """The Q/DQ analysis of the int8 ONNX, ONNX Runtime's int8 kernel counts, and what the target's
    runtime would not run as int8."""
    import onnx

    from .qdq import analyse_qdq, ort_int8_kernels, qdq_problems_of

    analysis = analyse_qdq(onnx.load(str(path)))
    problems = qdq_problems_of(analysis, target)
    kernels = ort_int8_kernels(path)
    fusable = analysis["quantized_convolutions"] - analysis["quantized_convolutions_float_output"]  # see analyse_qdq
    if target == "cpu" and kernels["qlinear_conv"] < fusable:
        problems.append(
            f"ONNX Runtime fused only {kernels['qlinear_conv']} of the {fusable} quantized convolutions with a quantized "
            "output into int8 QLinearConv kernels"
        )
    log.info(
        f"  Q/DQ: {analysis['quantized_convolutions']}/{analysis['convolutions']} convolutions quantized; ONNX Runtime runs "
        f"{kernels['qlinear_conv']} as QLinearConv, {kernels['float_conv']} in float"
    )
    return analysis, kernels, problems


def _int8_parity(options: ExportOptions, path: Path, quantized, held_out: ParityInputs, analysis: dict) -> dict:
    # Gate on the int8 model's exact integer arithmetic; report the float32 emulation (``.module`` as is)
    # beside it, so the share of disagreement that is emulation noise is visible (see ExactQDQReference).
    parity = check_parity(
        path, ExactQDQReference(quantized.module), held_out, "int8", batch_size=_parity_batch(options),
        threads=options.threads, reference_name="pytorch-int8-qdq (exact integer evaluation)",
        also_compare={"pytorch-int8-qdq float32 emulation": quantized.module},
    )
    if not parity["passed"] and analysis["conv_bias_off_int32_grid"]:
        parity["hint"] = (
            f"{analysis['conv_bias_off_int32_grid']} of {analysis['quantized_convolutions']} quantized convolutions have a float "
            "bias off the int32 grid (x_scale * w_scale); ONNX Runtime's QLinearConv rounds it, the PyTorch model does not. "
            "an artifact from `resnet-deploy quantize` has them on the grid: re-quantize this checkpoint"
        )
    return parity


def _plan_tensorrt(options: ExportOptions) -> dict:
    """Whether to build engines, and if not why. Explicit --tensorrt turns every obstacle into an error."""
    if options.tensorrt is False:
        return {"build": False, "reason": "--no-tensorrt"}
    try:
        _, flavour, version = runtime.import_tensorrt()
    except UserError as exc:
        if options.tensorrt:
            raise
        return {"build": False, "reason": str(exc).replace("\n ", ";")}
    engine_batches(options)  # a bad batch range is refused before any ONNX is exported
    gpu = runtime.current_gpu()
    if gpu is None and not options.compute_capability:
        reason = (
            f"no CUDA GPU here and no --compute-capability given ({flavour} {version} is installed; "
            + ("full TensorRT builds only on the target GPU)" if flavour == "tensorrt" else "name the target GPU, e.g. --compute-capability 8.6)")
        )
        if options.tensorrt:
            raise UserError(reason)
        return {"build": False, "reason": reason}
    capability = options.compute_capability or gpu["compute_capability"]  # type: ignore[index]
    return {"build": True, "flavour": flavour, "version": version, "compute_capability": capability}


def engine_batches(options: ExportOptions) -> BatchRange:
    """The engines' batch profile: a static-batch export's batch, else --min/--opt/--max-batch (validated)."""
    if options.static_batch is not None:
        return BatchRange.fixed(options.static_batch)
    return BatchRange(options.min_batch, options.opt_batch, options.max_batch)


def _build_engines(options: ExportOptions, manifest: dict, export_dir: Path, plan: dict,
                   precisions: list[str] | None = None) -> None:
    """An engine for every ONNX file of the manifest (of ``precisions``, when given) that TensorRT can
    take and whose parity passed; the others are recorded as skipped with the reason."""
    batches = engine_batches(options)
    timing_cache = options.timing_cache or Path(options.output_dir) / "tensorrt-timing.cache"
    for artifact in list(manifest["artifacts"]):
        if artifact["kind"] != "onnx" or (precisions and artifact["precision"] not in precisions):
            continue
        reason = _no_engine_reason(artifact)
        if reason is not None:
            manifest_lib.add_skipped(manifest, "tensorrt", artifact["precision"], reason)
            continue
        engine_path, sidecar = _build_engine_of(options, export_dir, artifact, plan["compute_capability"], batches, timing_cache)
        manifest_lib.add_artifact(manifest, _engine_entry(export_dir, artifact, engine_path, sidecar))


def _no_engine_reason(artifact: dict) -> str | None:
    """Why no engine is built from this ONNX artifact, or None when one is."""
    precision, scheme = artifact["precision"], artifact.get("scheme")
    if precision == "int8" and scheme != "tensorrt":
        return (f"{artifact['path']} uses the {scheme} int8 scheme (uint8 activations, non-zero zero-points), which TensorRT "
                "rejects; quantize with --target tensorrt for an int8 engine")
    if not artifact["parity"]["passed"]:
        return f"{artifact['path']} failed parity"
    return None


def _build_engine_of(options: ExportOptions, export_dir: Path, artifact: dict, compute_capability: str, batches: BatchRange,
                     timing_cache: Path) -> tuple[Path, dict]:
    """The engine of one ONNX artifact, next to it; returns its path and sidecar."""
    precision = artifact["precision"]
    onnx_path = export_dir / artifact["path"]
    cc_tag = "sm" + compute_capability.replace(".", "")
    engine_path = onnx_path.with_name(f"{onnx_path.stem}.{cc_tag}.engine")
    log.info(f"building {precision} TensorRT engine -> {engine_path}")
    if precision == "int8":  # predict every layer's engine precision and fusions from the graph first (inspect --lint)
        from ..inspect.lint import lint_before_engine_build
        artifact["qdq_lint"] = lint_before_engine_build(onnx_path)
    sidecar = build_engine(
        onnx_path, engine_path, precision=precision,
        min_batch=batches.min, opt_batch=batches.opt, max_batch=batches.max,
        workspace_mb=options.workspace_mb, opt_level=options.opt_level, timing_cache=timing_cache,
        compute_capability=compute_capability,
    )
    log.info(f"  built in {sidecar['build_seconds']:.2f} s, {sidecar['engine']['bytes'] / 2**20:.1f} MiB, "
             f"layers {sidecar['layer_precision']['layers']}, quantized convs {sidecar['layer_precision']['quantized_convolutions']}")
    return engine_path, sidecar


def _engine_entry(export_dir: Path, artifact: dict, engine_path: Path, sidecar: dict) -> dict:
    """The manifest's record of an engine built from ``artifact``."""
    return {
        "kind": "tensorrt",
        "precision": artifact["precision"],
        "scheme": artifact.get("scheme"),
        "path": manifest_lib.relative_to(export_dir, engine_path),
        "sidecar": manifest_lib.relative_to(export_dir, sidecar_path(engine_path)),
        "sha256": sidecar["engine"]["sha256"],
        "onnx": artifact["path"],
        "min_batch": sidecar["min_batch"],
        "opt_batch": sidecar["opt_batch"],
        "max_batch": sidecar["max_batch"],
        "compute_capability": sidecar["target"]["compute_capability"],
        "flavour": sidecar["flavour"],
        "tensorrt_version": sidecar["tensorrt_version"],
        "build_seconds": sidecar["build_seconds"],
        "layer_precision": sidecar["layer_precision"],
    }


def build_engines_for_export(
    export_dir: str | os.PathLike,
    *,
    precisions: list[str] | None = None,
    min_batch: int = 1,
    opt_batch: int = 64,
    max_batch: int = 256,
    workspace_mb: int = 1024,
    opt_level: int = 3,
    compute_capability: str | None = None,
    timing_cache: str | os.PathLike | None = None,
) -> tuple[dict, Path]:
    """Build engines for the ONNX files of an existing export (``resnet-deploy build-engine``), e.g. on
    the deployment GPU, and add them to its manifest. Returns (manifest, manifest path)."""
    from ..fileio import read_json

    export_dir = Path(export_dir)
    manifest_lib.load_manifest(export_dir)  # validates and checks every artifact's sha256
    manifest = read_json(export_dir / manifest_lib.MANIFEST_NAME, "export manifest")  # relative paths kept
    unchecked = [a["path"] for a in manifest["artifacts"] if a["kind"] == "onnx" and "parity" not in a]
    if unchecked:  # an engine is built only from an ONNX file whose parity check passed
        raise UserError(f"{export_dir / manifest_lib.MANIFEST_NAME}: {', '.join(unchecked)} has no parity record",
                        hint="export again with resnet-deploy export, which checks parity and records it")
    static = {a.get("static_batch") for a in manifest["artifacts"] if a["kind"] == "onnx" and not a["dynamic_batch"]}
    options = ExportOptions(
        checkpoint=Path(manifest["checkpoint"]["path"]), output_dir=export_dir.parent, tensorrt=True,
        static_batch=static.pop() if len(static) == 1 else None,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_mb=workspace_mb, opt_level=opt_level,
        compute_capability=parse_compute_capability(compute_capability) if compute_capability else None,
        timing_cache=Path(timing_cache) if timing_cache else None,
    )
    plan = _plan_tensorrt(options)
    manifest["skipped"] = [s for s in manifest.get("skipped", []) if s["kind"] != "tensorrt"]
    _build_engines(options, manifest, export_dir, plan, precisions)
    return manifest, manifest_lib.write_manifest(export_dir, manifest)
