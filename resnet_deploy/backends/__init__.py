"""Backends: one Runner interface (base.py), one module per runtime.

Public API::

    Runner, SkippedRunner, BackendUnavailable, NonFiniteOutputError      (base)
    PyTorchRunner, fp32_runner, autocast_runner, int8_runner              (pytorch)
    OnnxRuntimeRunner, onnx_quantization_scheme, available_providers     (onnxruntime)
    TensorRTRunner, cuda_unavailable_reason                               (tensorrt)
    OpenVinoRunner, openvino_installed                                    (openvino)
    RunnerOptions, build_runners: the rows of a benchmark from a checkpoint, an export directory
                                  (manifest.json) and a quantize artifact

Heavy runtimes (onnxruntime, TensorRT, OpenVINO) are imported only when a runner is activated, and
torch only when a PyTorch name is first used: the CLI reads ``BACKENDS`` from here at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import MissingDependencyError, UserError
from .base import BACKENDS, PRECISIONS, BackendUnavailable, NonFiniteOutputError, Runner, SkippedRunner, parse_device, physical_cores
from .onnxruntime import OnnxRuntimeRunner, available_providers, onnx_quantization_scheme
from .openvino import INSTALL as OPENVINO_INSTALL
from .openvino import PERFORMANCE_HINTS, OpenVinoRunner, openvino_installed
from .tensorrt import TensorRTRunner, cuda_unavailable_reason

# Names from backends.pytorch, which imports torch: loaded on first use (PEP 562).
_PYTORCH_NAMES = ("PyTorchRunner", "autocast_runner", "fp32_runner", "int8_runner")


def __getattr__(name: str):
    if name in _PYTORCH_NAMES:
        return getattr(importlib.import_module(".pytorch", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailable",
    "NonFiniteOutputError",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "PyTorchRunner",
    "Runner",
    "RunnerOptions",
    "SkippedRunner",
    "TensorRTRunner",
    "autocast_runner",
    "available_providers",
    "build_runners",
    "cuda_unavailable_reason",
    "fp32_runner",
    "int8_runner",
    "load_export_manifest",
    "onnx_quantization_scheme",
    "openvino_installed",
    "parse_device",
    "physical_cores",
]


@dataclass
class RunnerOptions:
    """Which rows to build and how they run (the ``bench`` command's options)."""

    backends: Sequence[str] = BACKENDS
    precisions: Sequence[str] = PRECISIONS
    device: str = "cpu"  # PyTorch FP32/FP16/BF16 rows; int8 PyTorch always runs on the CPU
    threads: int | None = None  # CPU threads (torch and ONNX Runtime intra-op); default physical cores
    compile: bool = False
    channels_last: bool = False
    ort_provider: str = "cpu"
    graph_optimization: str = "all"
    cuda_graph: bool = False
    device_id: int = 0
    ov_hint: str = "latency"  # OpenVINO PERFORMANCE_HINT: latency | throughput
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        for backend in self.backends:
            if backend not in BACKENDS:
                raise UserError(f"--backend must be among {', '.join(BACKENDS)} (or all), got {backend!r}")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise UserError(f"--precision must be among {', '.join(PRECISIONS)} (or all), got {precision!r}")
        if self.ov_hint not in PERFORMANCE_HINTS:
            raise UserError(f"--ov-hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {self.ov_hint!r}")
        parse_device(self.device)  # cuda:, cuda:-1, CUDA, " cpu", meta: refused with the option named
        if not (isinstance(self.device_id, int) and 0 <= self.device_id <= 9999):
            raise UserError(f"the GPU number must be 0..9999, got {self.device_id!r}")


def load_export_manifest(export_dir: str | Path) -> dict:
    """The export stage's manifest (``exports/<run>/manifest.json``) through its public loader."""
    from .. import export

    return export.load_manifest(export_dir)


def _resolve(export_dir: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else export_dir / candidate


def _check_hash(path: Path, expected: str | None) -> None:
    from ..fileio import sha256_file

    if expected and path.is_file() and sha256_file(path) != expected:
        raise UserError(f"{path} changed since it was exported (sha256 differs from manifest.json)", hint="re-run `resnet-deploy export`")


def build_runners(
    model,
    options: RunnerOptions,
    *,
    exports: Sequence[tuple[str | Path, dict]] = (),
    quantized: Sequence[str | Path] = (),
    checkpoint: str | Path | None = None,
) -> list[Runner | SkippedRunner]:
    """The benchmark's rows: ``pytorch-fp32`` (the baseline, always) first, then every requested
    backend/precision that has an artifact, and a SkippedRunner with the reason for each that cannot run.

    ``exports``: (export directory, its manifest) pairs. Several exports of one checkpoint may be given
    (e.g. one with the TensorRT-scheme int8 ONNX and engines, one with the CPU-scheme int8 ONNX); an
    artifact whose (kind, precision, int8 scheme) an earlier export already supplied is not repeated.
    ``quantized``: quantize artifact directories, one PyTorch int8 row each.
    """
    from .pytorch import PyTorchRunner, autocast_runner, fp32_runner, int8_runner

    options.validate()
    wanted = set(options.precisions)
    device = options.device
    on_gpu = device.startswith("cuda")
    runners: list[Runner | SkippedRunner] = [
        fp32_runner(model, device=device, threads=options.threads, channels_last=options.channels_last)
    ]

    if "pytorch" in options.backends:
        if options.compile and "fp32" in wanted:
            runners.append(
                PyTorchRunner(model, precision="fp32", device=device, compile=True, threads=options.threads, channels_last=options.channels_last)
            )
        for precision in ("fp16", "bf16"):
            if precision not in wanted:
                continue
            if on_gpu:
                runners.append(autocast_runner(model, precision, device=device, threads=options.threads, channels_last=options.channels_last))
            else:
                runners.append(SkippedRunner(f"pytorch-{precision}", "pytorch", precision, device, f"{precision} autocast rows run on a GPU; this run uses --device {device}"))
        if "int8" in wanted:
            if not quantized:
                runners.append(SkippedRunner("pytorch-int8-x86", "pytorch", "int8", "cpu", "no quantized artifact given (--quantized calibration/RUN)"))
            for directory in quantized:
                runner = int8_runner(directory, checkpoint, threads=options.threads)
                if len(quantized) > 1:
                    runner.name = f"pytorch-int8-x86-{Path(directory).name}"
                runners.append(runner)

    artifacts: list[tuple[Path, dict]] = []
    seen: set[tuple] = set()
    for export_dir, manifest in exports:
        for artifact in manifest.get("artifacts", []):
            key = (artifact.get("kind"), artifact.get("precision"), artifact.get("scheme"), artifact.get("compute_capability"))
            if key not in seen:
                seen.add(key)
                artifacts.append((Path(export_dir), artifact))
    export_names = ", ".join(str(d) for d, _ in exports)

    if "onnxruntime" in options.backends:
        onnx_artifacts = [(d, a) for d, a in artifacts if a.get("kind") == "onnx" and a.get("precision") in wanted]
        if not exports:
            runners.append(SkippedRunner("onnxruntime", "onnxruntime", "fp32", "cpu", "no export directory given (--export exports/RUN)"))
        elif not onnx_artifacts:
            runners.append(SkippedRunner("onnxruntime", "onnxruntime", "fp32", "cpu", f"{export_names} has no ONNX file for precision {', '.join(sorted(wanted))}"))
        ort_rows = []
        for export_dir, artifact in onnx_artifacts:
            path = _resolve(export_dir, artifact["path"])
            _check_hash(path, artifact.get("sha256"))
            ort_rows.append(
                OnnxRuntimeRunner(
                    path,
                    precision=artifact["precision"],
                    provider=options.ort_provider,
                    device_id=options.device_id,
                    threads=options.threads,
                    graph_optimization=options.graph_optimization,
                    scheme=artifact.get("scheme"),
                    sha256=artifact.get("sha256"),
                )
            )
        _name_duplicates_by_scheme(ort_rows)
        runners.extend(ort_rows)

    if "tensorrt" in options.backends:
        engines = [(d, a) for d, a in artifacts if a.get("kind") == "tensorrt" and a.get("precision") in wanted]
        if not exports:
            runners.append(SkippedRunner("tensorrt", "tensorrt", "int8", f"cuda:{options.device_id}", "no export directory given (--export exports/RUN)"))
        elif not engines:
            reasons = [entry.get("reason") for _, m in exports for entry in m.get("skipped", []) if entry.get("kind") == "tensorrt"]
            why = f": {reasons[0]}" if reasons and reasons[0] else " (export builds engines only where TensorRT is installed)"
            runners.append(SkippedRunner("tensorrt", "tensorrt", "int8", f"cuda:{options.device_id}", f"{export_names} has no TensorRT engine{why}"))
        names_used: set[str] = set()
        for export_dir, artifact in engines:
            # Built even without a GPU: activation checks the engine first (an error if broken), then
            # reports the missing GPU as a skip.
            name = f"tensorrt-{artifact['precision']}" + ("-cudagraph" if options.cuda_graph else "")
            if name in names_used and artifact.get("compute_capability"):
                name += f"-sm{str(artifact['compute_capability']).replace('.', '')}"
            names_used.add(name)
            path = _resolve(export_dir, artifact["path"])
            _check_hash(path, artifact.get("sha256"))
            onnx = _resolve(export_dir, artifact["onnx"]) if artifact.get("onnx") else None
            runners.append(
                TensorRTRunner(
                    path, precision=artifact["precision"], name=name, onnx_path=onnx,
                    device_id=options.device_id, cuda_graph=options.cuda_graph, sha256=artifact.get("sha256"),
                )
            )

    if "openvino" in options.backends:
        runners.extend(_openvino_rows(options, artifacts, [d for d, _ in exports]))
    return runners


def _openvino_rows(options: RunnerOptions, artifacts: list[tuple[Path, dict]], export_dirs: list[Path]) -> list[Runner | SkippedRunner]:
    """OpenVINO rows from the export's ONNX files: FP32 (f32), BF16 (the FP32 file at bf16 inference
    precision, where the CPU has it; when --precision names bf16) and each int8 Q/DQ file.

    Without the openvino package the rows are skipped when every backend was asked for (the default),
    and the command ends with exit 2 and the install line when openvino was named in --backend.
    """
    if not openvino_installed():
        if set(options.backends) != set(BACKENDS):
            raise MissingDependencyError("openvino", OPENVINO_INSTALL, "--backend openvino")
        return [SkippedRunner("openvino", "openvino", "fp32", "cpu", f"openvino is not installed ({OPENVINO_INSTALL})")]
    wanted = set(options.precisions)
    if not export_dirs:
        return [SkippedRunner("openvino", "openvino", "fp32", "cpu", "no export directory given (--export exports/RUN)")]
    onnx_files = [(d, a) for d, a in artifacts if a.get("kind") == "onnx"]
    fp32 = [(d, a) for d, a in onnx_files if a.get("precision") == "fp32"][:1]
    # bf16 runs the FP32 file at bf16 inference precision (activation skips it where the CPU lacks bf16).
    # Only when --precision names it: the default run (all) compares like with like, and its bf16 rows
    # would be gated at FP16's 99.9 % agreement, which a bf16 CPU run is not built to meet.
    float_precisions = ["fp32"] + (["bf16"] if "bf16" in wanted and wanted != set(PRECISIONS) else [])
    plan = [(d, a, precision) for precision in float_precisions if precision in wanted for d, a in fp32]
    plan += [(d, a, "int8") for d, a in onnx_files if a.get("precision") == "int8" and "int8" in wanted]
    if not plan:
        names = ", ".join(str(d) for d in export_dirs)
        return [SkippedRunner("openvino", "openvino", "fp32", "cpu", f"{names} has no ONNX file OpenVINO runs for precision {', '.join(sorted(wanted))}")]
    rows = []
    for export_dir, artifact, precision in plan:
        path = _resolve(export_dir, artifact["path"])
        _check_hash(path, artifact.get("sha256"))
        rows.append(OpenVinoRunner(path, precision=precision, threads=options.threads, hint=options.ov_hint,
                                   scheme=artifact.get("scheme"), sha256=artifact.get("sha256")))
    _name_duplicates_by_scheme(rows)
    return rows


def _name_duplicates_by_scheme(rows: list) -> None:
    """Two files read as the same int8 scheme: keep both, named by their export scheme."""
    names = [r.name for r in rows]
    for row in rows:
        if names.count(row.name) > 1 and row.scheme:
            row.name = f"{row.name}-{row.scheme}"
