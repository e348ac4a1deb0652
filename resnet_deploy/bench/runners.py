"""The benchmark's rows: which runner each requested backend/precision gets, built from plain inputs (the
model, quantize artifact folders, the exported files of :mod:`.artifacts`), and a SkippedRunner with
the reason for each row that cannot run. Row names (what results.json calls each row) are chosen here."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..backends.base import BACKENDS, PRECISIONS, Runner, SkippedRunner
from ..backends.onnxruntime import OnnxRuntimeRunner
from ..backends.openvino import INSTALL as OPENVINO_INSTALL
from ..backends.openvino import OpenVinoRunner, openvino_installed
from ..backends.options import RunnerOptions
from ..backends.tensorrt import TensorRTRunner
from ..errors import MissingDependencyError
from .artifacts import ExportedFile, Exports, merge_exports

Row = Runner | SkippedRunner


def build_runners(
    model,
    options: RunnerOptions,
    *,
    exports: Sequence[tuple[str | Path, dict]] = (),
    quantized: Sequence[str | Path] = (),
    checkpoint: str | Path | None = None,
) -> list[Row]:
    """The benchmark's rows: ``pytorch-fp32`` (the baseline, always) first, then every requested
    backend/precision that has an artifact, and a SkippedRunner with the reason for each that cannot run.

    ``exports``: (export directory, its manifest) pairs, merged by :func:`.artifacts.merge_exports` (an
    artifact an earlier export already supplied is not repeated). ``quantized``: quantize artifact
    directories, one PyTorch int8 row each.
    """
    from ..backends.pytorch import fp32_runner

    options.validate()
    runners: list[Row] = [fp32_runner(model, device=options.device, threads=options.threads, channels_last=options.channels_last)]
    if "pytorch" in options.backends:
        runners += pytorch_rows(model, options, quantized, checkpoint)
    exported = merge_exports(exports)
    if "onnxruntime" in options.backends:
        runners += onnxruntime_rows(options, exported)
    if "tensorrt" in options.backends:
        runners += tensorrt_rows(options, exported)
    if "openvino" in options.backends:
        runners += openvino_rows(options, exported)
    return runners


# --------------------------------------------------------------------------------------------- PyTorch


def pytorch_rows(model, options: RunnerOptions, quantized: Sequence[str | Path], checkpoint) -> list[Row]:
    """Beside the baseline: compiled FP32 (with --compile), FP16/BF16 autocast (GPU), int8 per artifact."""
    from ..backends.pytorch import PyTorchRunner

    wanted = set(options.precisions)
    rows: list[Row] = []
    if options.compile and "fp32" in wanted:
        rows.append(PyTorchRunner(model, precision="fp32", device=options.device, compile=True, threads=options.threads,
                                  channels_last=options.channels_last))
    rows += [_autocast_row(model, options, precision) for precision in ("fp16", "bf16") if precision in wanted]
    if "int8" in wanted:
        rows += _int8_rows(options, quantized, checkpoint)
    return rows


def _autocast_row(model, options: RunnerOptions, precision: str) -> Row:
    from ..backends.pytorch import autocast_runner

    device = options.device
    if device.startswith("cuda"):
        return autocast_runner(model, precision, device=device, threads=options.threads, channels_last=options.channels_last)
    return SkippedRunner(f"pytorch-{precision}", "pytorch", precision, device, f"{precision} autocast rows run on a GPU; this run uses --device {device}")


def _int8_rows(options: RunnerOptions, quantized: Sequence[str | Path], checkpoint) -> list[Row]:
    """One x86 int8 row per quantize artifact, named by its folder when there are several."""
    from ..backends.pytorch import int8_runner

    if not quantized:
        return [SkippedRunner("pytorch-int8-x86", "pytorch", "int8", "cpu", "no quantized artifact given (--quantized calibration/RUN)")]
    rows = []
    for directory in quantized:
        runner = int8_runner(directory, checkpoint, threads=options.threads)
        if len(quantized) > 1:
            runner.name = f"pytorch-int8-x86-{Path(directory).name}"
        rows.append(runner)
    return rows


# --------------------------------------------------------------------------------------------- exported files


def _no_export_row(backend: str, precision: str, device: str) -> SkippedRunner:
    return SkippedRunner(backend, backend, precision, device, "no export directory given (--export exports/RUN)")


def _listed(precisions: set[str]) -> str:
    return ", ".join(sorted(precisions))


def onnxruntime_rows(options: RunnerOptions, exported: Exports) -> list[Row]:
    """One ONNX Runtime row per exported ONNX file at a requested precision."""
    wanted = set(options.precisions)
    files = exported.select("onnx", wanted)
    if not exported.dirs:
        return [_no_export_row("onnxruntime", "fp32", "cpu")]
    if not files:
        return [SkippedRunner("onnxruntime", "onnxruntime", "fp32", "cpu", f"{exported.names} has no ONNX file for precision {_listed(wanted)}")]
    rows = [
        OnnxRuntimeRunner(
            onnx.checked_path(), precision=onnx.precision, provider=options.ort_provider, device_id=options.device_id,
            threads=options.threads, graph_optimization=options.graph_optimization, scheme=onnx.scheme, sha256=onnx.sha256,
        )
        for onnx in files
    ]
    _name_duplicates_by_scheme(rows)
    return rows


def tensorrt_rows(options: RunnerOptions, exported: Exports) -> list[Row]:
    """One TensorRT row per exported engine at a requested precision.

    Built even without a GPU: activation checks the engine first (an error if broken), then reports
    the missing GPU as a skip.
    """
    wanted = set(options.precisions)
    device = f"cuda:{options.device_id}"
    engines = exported.select("tensorrt", wanted)
    if not exported.dirs:
        return [_no_export_row("tensorrt", "int8", device)]
    if not engines:
        reasons = exported.tensorrt_skip_reasons
        why = f": {reasons[0]}" if reasons and reasons[0] else " (export builds engines only where TensorRT is installed)"
        return [SkippedRunner("tensorrt", "tensorrt", "int8", device, f"{exported.names} has no TensorRT engine{why}")]
    rows, names_used = [], set()
    for engine in engines:
        name = _engine_row_name(engine, options.cuda_graph, names_used)
        rows.append(TensorRTRunner(engine.checked_path(), precision=engine.precision, name=name, onnx_path=engine.onnx,
                                   device_id=options.device_id, cuda_graph=options.cuda_graph, sha256=engine.sha256))
    return rows


def _engine_row_name(engine: ExportedFile, cuda_graph: bool, names_used: set[str]) -> str:
    """``tensorrt-<precision>[-cudagraph]``, with ``-sm<NN>`` when engines for several GPUs share it."""
    name = f"tensorrt-{engine.precision}" + ("-cudagraph" if cuda_graph else "")
    if name in names_used and engine.compute_capability:
        name += f"-sm{str(engine.compute_capability).replace('.', '')}"
    names_used.add(name)
    return name


def openvino_rows(options: RunnerOptions, exported: Exports) -> list[Row]:
    """OpenVINO rows from the export's ONNX files: FP32 (f32), BF16 (the FP32 file at bf16 inference
    precision, where the CPU has it; when --precision names bf16) and each int8 Q/DQ file.

    Without the openvino package the rows are skipped when every backend was asked for (the default),
    and the command ends with exit 2 and the install line when openvino was named in --backend.
    """
    if not openvino_installed():
        if set(options.backends) != set(BACKENDS):
            raise MissingDependencyError("openvino", OPENVINO_INSTALL, "--backend openvino")
        return [SkippedRunner("openvino", "openvino", "fp32", "cpu", f"openvino is not installed ({OPENVINO_INSTALL})")]
    if not exported.dirs:
        return [_no_export_row("openvino", "fp32", "cpu")]
    wanted = set(options.precisions)
    plan = _openvino_plan(exported, wanted)
    if not plan:
        return [SkippedRunner("openvino", "openvino", "fp32", "cpu", f"{exported.names} has no ONNX file OpenVINO runs for precision {_listed(wanted)}")]
    rows = [
        OpenVinoRunner(onnx.checked_path(), precision=precision, threads=options.threads, hint=options.ov_hint,
                       scheme=onnx.scheme, sha256=onnx.sha256)
        for onnx, precision in plan
    ]
    _name_duplicates_by_scheme(rows)
    return rows


def _openvino_plan(exported: Exports, wanted: set[str]) -> list[tuple[ExportedFile, str]]:
    """(ONNX file, inference precision) for each OpenVINO row: the first FP32 file at fp32 (and bf16),
    then every int8 file."""
    fp32 = exported.select("onnx", {"fp32"})[:1]
    # bf16 runs the FP32 file at bf16 inference precision (activation skips it where the CPU lacks bf16).
    # Only when --precision names it: the default run (all) compares like with like, and its bf16 rows
    # would be gated at FP16's 99.9 % agreement, which a bf16 CPU run is not built to meet.
    float_precisions = ["fp32"] + (["bf16"] if "bf16" in wanted and wanted != set(PRECISIONS) else [])
    plan = [(onnx, precision) for precision in float_precisions if precision in wanted for onnx in fp32]
    if "int8" in wanted:
        plan += [(onnx, "int8") for onnx in exported.select("onnx", {"int8"})]
    return plan


def _name_duplicates_by_scheme(rows: list) -> None:
    """Two files read as the same int8 scheme: keep both, named by their export scheme."""
    names = [r.name for r in rows]
    for row in rows:
        if names.count(row.name) > 1 and row.scheme:
            row.name = f"{row.name}-{row.scheme}"
