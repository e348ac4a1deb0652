"""``export``, ``build-engine`` and ``check-engine``: deployable ONNX / TensorRT artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from ..overwrite_guard import checkpoint_differences, refuse_overwrite
from .options import CHECKPOINT, dataset_options, echo_json, force_option, no_empty_folders_left


def _tensorrt_options(func):
    """Engine options shared by ``export`` and ``build-engine``."""
    options = [
        click.option("--min-batch", default=1, show_default=True, type=click.IntRange(min=1), help="Smallest batch the engine accepts."),
        click.option("--opt-batch", default=64, show_default=True, type=click.IntRange(min=1), help="Batch TensorRT tunes kernels for."),
        click.option("--max-batch", default=256, show_default=True, type=click.IntRange(min=1), help="Largest batch the engine accepts."),
        click.option("--workspace-mb", default=1024, show_default=True, type=click.IntRange(min=16), help="Builder scratch-memory limit (MiB)."),
        click.option("--opt-level", default=3, show_default=True, type=click.IntRange(0, 5), help="Builder optimisation level: higher searches longer for faster kernels."),
        click.option("--compute-capability", help="Target GPU, e.g. 8.6 (RTX 30xx/A10), 8.9 (RTX 40xx/L4), 12.0 (RTX 50xx). "
                     "Default: this machine's GPU. Without a GPU only TensorRT-RTX can build, for a named target."),
        click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache file reused across builds "
                     "[OUTPUT_DIR/tensorrt-timing.cache] (full TensorRT; TensorRT-RTX has none)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@click.argument("checkpoint", type=CHECKPOINT)
@click.option("--int8", "int8_dir", type=click.Path(path_type=Path), help="A `resnet-deploy quantize` artifact directory: also export its int8 Q/DQ ONNX "
              "(needs --data-dir: int8 parity runs on the held-out test split).")
@click.option("--fp16", is_flag=True, help="Also export an FP16 ONNX (float32 input/output, half inside) and, with TensorRT, an FP16 engine.")
@click.option("--name", help="Run name: files go to OUTPUT_DIR/NAME/ [the checkpoint's folder name].")
@click.option("--output-dir", default="exports", show_default=True, type=click.Path(path_type=Path), help="Folder holding one folder per export (OUTPUT_DIR/NAME/).")
@click.option("--static-batch", type=click.IntRange(min=1), help="Fix the batch dimension to N (default: dynamic batch).")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (18..23); 18 is read by TensorRT 10, TensorRT-RTX and ONNX Runtime.")
@click.option("--tensorrt/--no-tensorrt", default=None, help="Build TensorRT engines [default: when TensorRT or TensorRT-RTX is installed "
              "and there is a GPU or --compute-capability; --tensorrt makes a missing one an error].")
@_tensorrt_options
@dataset_options
@click.option("--parity-images", type=click.IntRange(min=1), help="int8 parity: use the first N test images [all].")
@click.option("--parity-batch", default=64, show_default=True, type=click.IntRange(min=1), help="Size of the fixed batch for FP32/FP16 parity.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim/onnxslim.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads for the parity runs [all cores].")
@force_option(what="OUTPUT_DIR/NAME")
def export(checkpoint, int8_dir, fp16, name, output_dir, static_batch, opset, tensorrt, min_batch, opt_batch, max_batch,
           workspace_mb, opt_level, compute_capability, timing_cache, load_data, parity_images, parity_batch, no_simplify, threads, force):
    """Export CHECKPOINT to ONNX (FP32, optionally FP16 and int8) and TensorRT engines, and prove each
    computes what the PyTorch model computes (ONNX Runtime on CPU).

    Writes OUTPUT_DIR/NAME/manifest.json listing every file with its sha256 and parity numbers. Parity:
    FP32 max |logit diff| < 1e-4 and 100% top-1 agreement on a fixed batch; FP16 top-1 >= 98%; int8 vs
    the PyTorch int8 model >= 99.5% top-1 agreement on held-out test images. A failed check exits 1
    and names it. OUTPUT_DIR/NAME holding an export of another checkpoint (runs/r20/last.pt after
    runs/r20/best.pt: both default to NAME r20) is not overwritten without --force; one of the same
    checkpoint is.

    \b
    Examples:
      resnet-deploy export runs/r20/best.pt --data-dir DATA
      resnet-deploy export runs/r20/best.pt --fp16 --int8 calibration/r20 --data-dir DATA
      resnet-deploy export runs/r20/best.pt --int8 calibration/r20 --data-dir DATA --compute-capability 8.6
      resnet-deploy export runs/r20/best.pt --static-batch 1 --no-tensorrt --name r20-b1
    """
    from ..checkpoint import load_checkpoint
    from ..export import ExportOptions, export_checkpoint
    from ..run_names import export_run_name

    ctx = click.get_current_context()
    has_data = bool(ctx.params.get("data_dir")) or ctx.params.get("dataset") == "synthetic"
    dataset = load_data() if has_data else None
    export_dir = Path(output_dir) / (name or export_run_name(checkpoint, "model"))
    loaded = None
    if Path(checkpoint).is_file():  # a missing one is the export's to report
        loaded = load_checkpoint(checkpoint)  # read and hashed once, for this check and the export
        refuse_overwrite(export_dir, "manifest.json", checkpoint_differences(checkpoint, loaded.sha256), what="an export",
                         force=force, instead="give another --name")
    options = ExportOptions(
        checkpoint=checkpoint, output_dir=output_dir, name=name, fp16=fp16, int8_dir=int8_dir, static_batch=static_batch,
        opset=opset, tensorrt=tensorrt, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_mb=workspace_mb, opt_level=opt_level, compute_capability=compute_capability, timing_cache=timing_cache,
        dataset=dataset, parity_images=parity_images, fixed_batch_size=parity_batch, simplify=not no_simplify, threads=threads,
        loaded=loaded,
    )
    with no_empty_folders_left(export_dir, output_dir):
        report = export_checkpoint(options)
    _print_summary(report.manifest, report.manifest_path)


def _print_summary(manifest: dict, manifest_path: Path) -> None:
    click.echo(f"manifest: {manifest_path}")
    for artifact in manifest["artifacts"]:
        label = artifact["precision"] + (f"/{artifact['scheme']}" if artifact.get("scheme") else "")
        if artifact["kind"] == "onnx":
            parity = artifact["parity"]
            click.echo(
                f"  onnx      {label:<13} {artifact['path']:<36} parity {'ok' if parity['passed'] else 'FAILED'}: "
                f"max|diff| {parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.2f}% ({parity['count']} inputs)"
            )
        else:
            click.echo(
                f"  tensorrt  {label:<13} {artifact['path']:<36} {artifact['flavour']} sm{artifact['compute_capability'].replace('.', '')}, "
                f"batch {artifact['min_batch']}..{artifact['max_batch']} (opt {artifact['opt_batch']}), built in {artifact['build_seconds']:.2f} s"
            )
    for skipped in manifest.get("skipped", []):
        click.echo(f"  skipped   {skipped['kind']} {skipped.get('precision') or ''}: {skipped['reason']}")


@click.command("build-engine")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Which ONNX files to build engines from (repeatable) [all that passed parity].")
@_tensorrt_options
def build_engine_command(export_dir, precisions, min_batch, opt_batch, max_batch, workspace_mb, opt_level, compute_capability, timing_cache):
    """Build TensorRT engines for an existing export directory (e.g. copied to the GPU machine) and add
    them to its manifest.

    \b
    Examples:
      resnet-deploy build-engine exports/r20                       # on the target GPU, full TensorRT
      resnet-deploy build-engine exports/r20 --compute-capability 8.9 --precision int8   # TensorRT-RTX, no GPU needed
    """
    from ..export.run import build_engines_for_export

    manifest, manifest_path = build_engines_for_export(
        export_dir, precisions=list(precisions) or None, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_mb=workspace_mb, opt_level=opt_level, compute_capability=compute_capability, timing_cache=timing_cache,
    )
    _print_summary(manifest, manifest_path)


@click.command("check-engine")
@click.argument("engine", type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), help="The ONNX the engine must have been built from [the one its sidecar names].")
def check_engine_command(engine, onnx_path):
    """Check that ENGINE can be loaded here: sidecar present, engine unchanged, same TensorRT flavour and
    version, same GPU compute capability (when a GPU is present), source ONNX unchanged. Prints the sidecar.

    \b
    Example:
      resnet-deploy check-engine exports/r20/model-int8-tensorrt.sm86.engine
    """
    from ..export import check_engine

    echo_json(check_engine(engine, onnx_path))


COMMANDS = [export, build_engine_command, check_engine_command]
