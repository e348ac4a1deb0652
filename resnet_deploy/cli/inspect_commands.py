"""``inspect``: the layer-wise int8 debugger and the Q/DQ lint."""

from __future__ import annotations

from pathlib import Path

import click

from ..optional import has_matplotlib
from .options import CHECKPOINT, dataset_options, echo_json, no_empty_folders_left


@click.command("inspect")
@click.argument("checkpoint", required=False, type=CHECKPOINT)
@click.option("--int8", "int8_dir", type=click.Path(path_type=Path), help="The `resnet-deploy quantize` artifact of CHECKPOINT.")
@click.option("--export", "export_dir", type=click.Path(path_type=Path),
              help="An export of that artifact: inspect its int8 ONNX (and engine) [export the int8 ONNX afresh into -o].")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), help="An int8 ONNX file exported from --int8's artifact to "
              "inspect (instead of --export's); with --lint and no CHECKPOINT, the file to lint.")
@dataset_options
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), help="Where inspect.json, inspect.md and sqnr.png go.")
@click.option("--images", default=256, show_default=True, type=click.IntRange(min=1), help="Held-out test images (the first N).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Images per forward pass of each implementation.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="Layers in each ranking.")
@click.option("--lint", is_flag=True, help="Print the Q/DQ lint (TensorRT's predicted precision and fusions per layer); "
              "without CHECKPOINT, lint --onnx or --export alone.")
@click.option("--compute-capability", help="Check the lint against a TensorRT-RTX build for this GPU (e.g. 8.6) when this "
              "machine has none.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads [all cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the lint as JSON (with --lint).")
def inspect_command(checkpoint, int8_dir, export_dir, onnx_path, load_data, output_dir, images, batch_size, top, lint,
                    compute_capability, threads, as_json):
    """Find the int8 layer to blame: per layer (each conv, the FC, each residual Add) the SQNR, cosine
    and max error of the PyTorch int8 program, ONNX Runtime and TensorRT (where an engine runs) against
    FP32 and against each other, on the same held-out images; the layers that lose most against FP32
    with a suggestion each; the layers where two int8 implementations diverge with the parameter that
    differs; top-1 agreement at batch 1 and at the largest batch; and the Q/DQ lint.

    \b
    Examples:
      resnet-deploy inspect runs/r20/best.pt --int8 calibration/r20-tensorrt --data-dir DATA -o inspect/r20
      resnet-deploy inspect runs/r20/best.pt --int8 calibration/r20-tensorrt --export exports/r20 --data-dir DATA -o inspect/r20
      resnet-deploy inspect pretrained:resnet20 --int8 calibration/resnet20-tensorrt --data-dir DATA -o inspect/zoo-r20
      resnet-deploy inspect --lint --export exports/r20
      resnet-deploy inspect --lint --onnx exports/r20/model-int8-tensorrt.onnx --compute-capability 8.6
    """
    from ..errors import UserError

    if checkpoint is None:
        if not lint:
            raise UserError("give CHECKPOINT --int8 DIR to inspect, or --lint with --onnx/--export to lint a graph")
        _lint_only(onnx_path, export_dir, compute_capability, as_json)
        return
    if int8_dir is None or output_dir is None:
        raise UserError("inspect CHECKPOINT needs --int8 (its quantize artifact) and -o (where the report goes)")
    from ..inspect import InspectOptions, inspect_int8

    dataset = load_data()
    with no_empty_folders_left(output_dir):
        record = inspect_int8(InspectOptions(
            checkpoint=checkpoint, int8_dir=int8_dir, dataset=dataset, output_dir=output_dir, export_dir=export_dir,
            onnx_path=onnx_path,
            images=images, batch_size=batch_size, threads=threads, compute_capability=compute_capability, top=top,
        ))
    _print_summary(record, output_dir)
    if lint:
        _print_lint(record["lint"])


def _lint_only(onnx_path, export_dir, compute_capability, as_json) -> None:
    import onnx

    from ..errors import UserError
    from ..inspect import OnnxGraph, lint_report

    if onnx_path is None and export_dir is not None:
        from ..export.manifest import find_artifact, load_manifest

        artifact = find_artifact(load_manifest(export_dir), "onnx", "int8")
        if artifact is None:
            raise UserError(f"{export_dir} has no int8 ONNX to lint")
        onnx_path = Path(artifact["path"])
    if onnx_path is None or not Path(onnx_path).is_file():
        raise UserError(f"--lint needs an int8 ONNX: --onnx FILE or --export DIR (got {onnx_path})")
    report = lint_report(OnnxGraph(onnx.load(str(onnx_path))), onnx_path, compute_capability)
    echo_json(report) if as_json else _print_lint(report)


def _print_summary(record: dict, output_dir: Path) -> None:
    click.echo(f"inspected {len(record['layers'])} layers on {record['images']['source']} in {record['seconds']:.0f} s")
    for name, entry in record["implementations"].items():
        click.echo(f"  {name:<13} {'top-1 %.2f%%' % record['top1'][name] if name in record['top1'] else entry.get('reason', '')}")
    click.echo("layers losing most against FP32 (each alone):")
    for entry in record["rankings"]["quantization_loss"]:
        click.echo(f"  {entry['name']:<20} {entry['sqnr_db_alone']:.1f} dB  {entry['suggestion']}")
    for impl, ranking in record["rankings"]["divergence"].items():
        click.echo(f"pytorch-int8 vs {impl}: " + ("no layer differs" if not ranking else "diverging layers:"))
        for entry in ranking:
            click.echo(f"  {entry['name']:<20} {100 * entry['local_mismatch_fraction']:.3g}% apart  {entry['diagnosis']}")
    plot = f"  plot: {output_dir / 'sqnr.png'}" if has_matplotlib() else ""  # drawn only with matplotlib
    click.echo(f"report: {output_dir / 'inspect.md'}  data: {output_dir / 'inspect.json'}{plot}")


def _print_lint(report: dict) -> None:
    from ..inspect.lint import describe

    click.echo(f"Q/DQ lint: {describe(report['summary'])}")
    for row in report["rows"]:
        why = "; ".join(row["reasons"] + row["warnings"][:1])
        click.echo(f"  {(row['layer'] or row['node']):<22} {row['precision']:<8} -> {row['output']:<5} {row['pattern']:<32} {why}")
    builder = report.get("builder", {})
    if builder.get("ran"):
        click.echo(f"TensorRT ({builder['source']}): " + ("agrees on every layer" if builder["agree"] else
                                                          f"disagrees on {builder['disagreements']}"))
    else:
        click.echo(f"not checked against TensorRT: {builder.get('reason')}")


COMMANDS = [inspect_command]
