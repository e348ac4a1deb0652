"""``inspect_int8``: the layer-wise int8 debugger as one library call (``resnet-deploy inspect``).

On the same fixed held-out images (the first N of the test split, which neither training nor
calibration saw) every layer of :mod:`.layers` is observed in FP32, in the PyTorch int8 program, in
ONNX Runtime and, where an engine runs, in TensorRT (:mod:`.taps`, :mod:`.ort_taps`,
:mod:`.tensorrt_taps`). Four comparisons per layer, each accumulated over all images (:mod:`.metrics`):

* ``vs_fp32``: each int8 implementation against FP32, errors of earlier layers included (the curve
  in ``sqnr.png``);
* ``alone_vs_fp32``: the int8 program computing the layer from FP32 inputs (re-quantized on its grid):
  the loss the layer causes by itself. The *quantization-loss* ranking sorts by it;
* ``between``: the int8 program against another implementation, errors of earlier layers included;
* ``local``: the other implementation's output against the int8 program computing the layer from
  that implementation's own int8 inputs: a difference here is the layer's own, not inherited. The
  *divergence* ranking sorts by it (share of outputs a step or more apart), and names the parameter
  that differs (:mod:`.diagnose`).

Top-1 agreement of the int8 ONNX (and engine) at batch 1 and at the largest profile batch is measured
too: an implementation can be right at one batch size and wrong at another.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import progress
from ..checkpoint import check_dataset_matches, load_checkpoint
from ..data import ImageDataset
from ..errors import UserError
from ..export.parity import ParityInputs, compare_logits, onnx_forward, onnx_session, run_in_batches
from ..fileio import ensure_writable_dir, sha256_file
from .graph import OnnxGraph
from .layers import Layer, build_layer_map
from .lint import lint_report
from .metrics import Agreement
from .results import FP32, ONNXRUNTIME, PYTORCH_INT8, TENSORRT
from .taps import Observation, run_fp32, run_int8

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 256  # "a few hundred": enough for per-layer statistics, a minute for ResNet20 on 2 cores
DEFAULT_BATCH = 64
TOP = 5


@dataclass
class InspectOptions:
    """Options of one inspect run (the CLI's flags, one to one)."""

    checkpoint: Path
    int8_dir: Path
    dataset: ImageDataset
    output_dir: Path
    export_dir: Path | None = None
    onnx_path: Path | None = None  # an int8 ONNX exported from ``int8_dir`` (instead of ``export_dir``'s)
    images: int = DEFAULT_IMAGES
    batch_size: int = DEFAULT_BATCH
    threads: int | None = None
    compute_capability: str | None = None  # for the lint-vs-builder check without a GPU (TensorRT-RTX)
    top: int = TOP


# --------------------------------------------------------------------------------------------- inputs


def _load(options: InspectOptions):
    from ..quantize import load_quantized

    loaded = load_checkpoint(options.checkpoint)
    check_dataset_matches(loaded, options.dataset.classes, options.dataset.name)
    quantized = load_quantized(options.int8_dir, checkpoint=options.checkpoint)
    return loaded, quantized


def held_out(dataset: ImageDataset, count: int, normalization) -> ParityInputs:
    """The first ``count`` test images (fixed, so two runs compare the same images)."""
    if count < 1:
        raise UserError(f"--images must be positive, got {count}")
    count = min(count, len(dataset.test_images))
    return ParityInputs(dataset.test_images[:count], normalization, f"first {count} {dataset.name} test images (held out)",
                        dataset.test_labels[:count])


def int8_onnx(options: InspectOptions, quantized, loaded) -> tuple[Path, dict]:
    """The int8 ONNX to inspect: the given file, the export's (``--export``), else exported now from the
    artifact. Layer matching (:mod:`.layers`) refuses a file that is not this artifact's."""
    if options.onnx_path is not None:
        if not Path(options.onnx_path).is_file():
            raise UserError(f"int8 ONNX not found: {options.onnx_path}")
        return Path(options.onnx_path), {"source": "given file", "max_batch": None, "engine": None}
    if options.export_dir is not None:
        return _exported_onnx(options, quantized)
    from ..export.onnx_export import ExportInfo, export_onnx

    path = Path(options.output_dir) / f"model-int8-{quantized.target}.onnx"
    log.info(f"exporting the int8 ONNX of {options.int8_dir} -> {path}")
    info = ExportInfo(quantized.spec.to_dict(), quantized.normalization.to_dict(), list(quantized.classes), loaded.sha256,
                      "int8", quantized.target)
    export_onnx(quantized.module, path, info)
    return path, {"source": "exported for this run", "max_batch": None, "engine": None}


def _exported_onnx(options: InspectOptions, quantized) -> tuple[Path, dict]:
    from ..export.manifest import find_artifact, load_manifest

    manifest = load_manifest(options.export_dir)
    artifact = find_artifact(manifest, "onnx", "int8", quantized.target)
    recorded = (manifest.get("quantization") or {}).get("checkpoint_sha256")  # null in an export without int8
    if artifact is None:
        raise UserError(f"{options.export_dir} has no int8 ONNX of the {quantized.target} scheme",
                        hint=f"export it: resnet-deploy export CHECKPOINT --int8 {options.int8_dir} --data-dir DATA")
    if recorded and recorded != quantized.checkpoint_sha256:
        raise UserError(f"{options.export_dir} was exported from another checkpoint than {options.int8_dir} was calibrated from")
    engine = find_artifact(manifest, "tensorrt", "int8", quantized.target)
    return Path(artifact["path"]), {"source": f"export {manifest['export_dir']}", "engine": engine and engine["path"],
                                    "max_batch": engine and engine.get("max_batch")}


# --------------------------------------------------------------------------------------------- implementations


def _implementations(onnx_path: Path, graph: OnnxGraph, layers: list[Layer], workdir: Path, options: InspectOptions,
                     max_batch: int) -> tuple[dict, dict]:
    """(name -> taps, name -> status) of the int8 implementations besides the PyTorch program."""
    from . import tensorrt_taps
    from .ort_taps import OnnxTaps

    taps = {ONNXRUNTIME: OnnxTaps(onnx_path, graph, layers, workdir, options.threads)}
    status = {ONNXRUNTIME: {"ran": True, "what": "ONNX Runtime CPU, its optimised graph (fusions as deployed)"}}
    reason = tensorrt_taps.unavailable_reason()
    if reason is None:
        taps[TENSORRT] = tensorrt_taps.TensorRTTaps(onnx_path, graph, layers, max_batch)
        status[TENSORRT] = {"ran": True, "what": "debug-tensor engine with the deployed fusions (unfused tensors marked)",
                            "engine_layers": taps[TENSORRT].located}
    else:
        status[TENSORRT] = {"ran": False, "reason": f"not runnable here: {reason}"}
    return taps, status


# --------------------------------------------------------------------------------------------- comparing


class Tally:
    """The four comparisons of the module docstring, per layer, over every batch."""

    def __init__(self, layers: list[Layer], others: list[str]) -> None:
        names = [layer.name for layer in layers]
        self.vs_fp32 = {impl: {n: Agreement() for n in names} for impl in [PYTORCH_INT8, *others]}
        self.alone = {n: Agreement() for n in names}
        self.between = {impl: {n: Agreement() for n in names} for impl in others}
        self.local = {impl: {n: Agreement() for n in names} for impl in others}

    def add(self, kind: dict, reference: dict[str, Observation], candidate: dict[str, Observation]) -> None:
        for name, observed in candidate.items():
            if name in reference:
                kind[name].add(reference[name], observed)


def compare_batches(layers, program, fp32_capture, taps: dict, inputs: ParityInputs, batch_size: int, output_layer: str):
    """Run every implementation on every batch; returns (Tally, {implementation: logits})."""
    tally = Tally(layers, list(taps))
    logits: dict[str, list] = {FP32: [], PYTORCH_INT8: [], **{impl: [] for impl in taps}}
    with progress.bar("inspecting", len(inputs)) as bar:
        for batch in inputs.batches(batch_size):
            fp32, own = run_fp32(fp32_capture, layers, batch), run_int8(program, layers, batch)
            tally.add(tally.vs_fp32[PYTORCH_INT8], fp32, own)
            tally.add(tally.alone, fp32, run_int8(program, layers, batch, forced=fp32))
            for impl, tap in taps.items():
                theirs = tap.run(batch)
                tally.add(tally.vs_fp32[impl], fp32, theirs)
                tally.add(tally.between[impl], own, theirs)
                tally.add(tally.local[impl], theirs, run_int8(program, layers, batch, forced=theirs))
                logits[impl].append(theirs[output_layer].real().float().numpy() if output_layer in theirs else tap.logits(batch))
            logits[FP32].append(fp32[output_layer].real().float().numpy())
            logits[PYTORCH_INT8].append(own[output_layer].real().float().numpy())
            bar.advance(len(batch))
    return tally, {impl: np.concatenate(parts) for impl, parts in logits.items()}


# --------------------------------------------------------------------------------------------- batch sizes


def logits_at_batch(forward, inputs: ParityInputs, batch: int) -> np.ndarray:
    """Logits of ``forward`` run in batches of exactly ``batch`` (images repeated to fill the last)."""
    count = len(inputs)
    padded = int(np.ceil(count / batch)) * batch
    images = np.concatenate([inputs.images] * int(np.ceil(padded / count)))[:padded]
    tiled = ParityInputs(images, inputs.normalization, inputs.source)
    return run_in_batches(forward, tiled, batch)[:count]


def batch_agreement(forward, inputs: ParityInputs, reference: np.ndarray, max_batch: int) -> dict:
    """Top-1 agreement with the int8 program at batch 1 and at ``max_batch``, and between the two."""
    at_one, at_max = logits_at_batch(forward, inputs, 1), logits_at_batch(forward, inputs, max_batch)
    keep = ("top1_agreement", "disagreements", "max_abs_diff")
    pick = lambda stats: {k: stats[k] for k in keep}  # noqa: E731
    return {"max_batch": max_batch, "batch_1": pick(compare_logits(reference, at_one)),
            "max_batch_result": pick(compare_logits(reference, at_max)), "batch_1_vs_max": pick(compare_logits(at_one, at_max))}


def _batch_sizes(onnx_path: Path, inputs: ParityInputs, reference: np.ndarray, max_batch: int, engine: str | None,
                 threads: int | None) -> dict:
    results = {ONNXRUNTIME: batch_agreement(onnx_forward(onnx_session(onnx_path, threads)), inputs, reference, max_batch)}
    if engine:
        from ..backends.tensorrt import TensorRTRunner

        try:
            with TensorRTRunner(engine, precision="int8") as runner:
                results[TENSORRT] = batch_agreement(runner.infer, inputs, reference, max_batch)
        except UserError as exc:
            results[TENSORRT] = {"ran": False, "reason": str(exc).splitlines()[0]}
    return results


# --------------------------------------------------------------------------------------------- the run


def inspect_int8(options: InspectOptions) -> dict:
    """Run the debugger; write inspect.json, inspect.md and sqnr.png to ``options.output_dir``; return
    the JSON record."""
    import onnx

    from ..export.run import ExportOptions
    from ..quantize.capture import capture
    from . import render, results
    from .ort_taps import naive_exposure

    started = time.perf_counter()
    output_dir = ensure_writable_dir(options.output_dir, what="inspect output directory")
    loaded, quantized = _load(options)
    onnx_path, source = int8_onnx(options, quantized, loaded)
    graph = OnnxGraph(onnx.load(str(onnx_path)))
    fp32_capture = capture(loaded.model)
    layers = build_layer_map(quantized.module, fp32_capture, graph)
    output_layer = next(layer.name for layer in layers if layer.onnx_output in graph.outputs)
    inputs = held_out(options.dataset, options.images, quantized.normalization)
    max_batch = int(source["max_batch"] or ExportOptions.max_batch)  # the engine's profile, else export's default
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-inspect-") as workdir:
        taps, status = _implementations(onnx_path, graph, layers, Path(workdir), options, max_batch)
        first = inputs.tensor(0, options.batch_size)
        status[ONNXRUNTIME]["exposure"] = taps[ONNXRUNTIME].check_exposure(first)
        status[ONNXRUNTIME]["naive_exposure"] = naive_exposure(onnx_path, graph, layers, Path(workdir), first, options.threads)
        tally, logits = compare_batches(layers, quantized.module, fp32_capture, taps, inputs, options.batch_size, output_layer)
    batch_sizes = _batch_sizes(onnx_path, inputs, logits[PYTORCH_INT8], max_batch, source.get("engine"), options.threads)
    record = results.build(
        options=options, loaded=loaded, quantized=quantized, onnx_path=onnx_path, onnx_sha256=sha256_file(onnx_path),
        source=source, inputs=inputs, layers=layers, graph=graph, status=status, tally=tally, logits=logits,
        batch_sizes=batch_sizes,
        lint=lint_report(graph, onnx_path, options.compute_capability, {l.onnx_nodes[0]: l.name for l in layers if l.onnx_nodes}),
        seconds=time.perf_counter() - started,
    )
    render.write_outputs(record, output_dir)
    return record
