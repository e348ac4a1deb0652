"""``bench``: measure every backend against FP32 PyTorch (its options and summary are the ``pipeline``
command's too, see ``pipeline_commands``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .. import progress
from ..backends.base import BACKENDS, PRECISIONS
from ..backends.onnxruntime import GRAPH_OPTIMIZATION_LEVELS, PROVIDERS
from ..backends.openvino import PERFORMANCE_HINTS
from ..backends.options import RunnerOptions
from ..bench.settings import BenchSettings, Thresholds
from ..errors import UserError
from ..run_names import check_run_name
from .options import CHECKPOINT, dataset_options, default_of, echo_json, force_option, no_empty_folders_left, parse_int_list


def _parse_choices(text: str, option: str, choices: tuple[str, ...]) -> list[str]:
    values = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not values or values == ["all"]:
        return list(choices)
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise UserError(f"{option} accepts {', '.join(choices)} or all (comma-separated), got {', '.join(unknown)}")
    return values


def _choices_text(values, choices: tuple[str, ...]) -> str:
    """A list of choices as the option spells it (the reverse of ``_parse_choices``)."""
    return "all" if tuple(values) == tuple(choices) else ",".join(values)


def bench_options(func=None, *, verify_default: bool = False):
    """Options shared by ``bench`` and ``pipeline`` (how to measure and gate). ``bench`` gates only with
    --verify; ``pipeline`` (``verify_default=True``) gates unless --no-verify."""
    if func is None:
        return lambda f: bench_options(f, verify_default=verify_default)
    verify_help = (
        ("Gate the report on the thresholds below (the default): exit 1 naming each failing row; --no-verify "
         "reports without gating." if verify_default else
         "Gate on the thresholds below: exit 1 naming each failing row.")
        + " Of --verify and --no-verify, the last one given wins."
    )
    # Every default is the library's: RunnerOptions', BenchSettings' and Thresholds' field defaults.
    decorators = [
        click.option("--backend", "backends", default=_choices_text(default_of(RunnerOptions, "backends"), BACKENDS), show_default=True, help=f"Comma list of {', '.join(BACKENDS)}, or all. FP32 PyTorch eager always runs: it is the baseline."),
        click.option("--precision", "precisions", default=_choices_text(default_of(RunnerOptions, "precisions"), PRECISIONS), show_default=True, help=f"Comma list of {', '.join(PRECISIONS)}, or all."),
        click.option("--batch-sizes", default=",".join(map(str, default_of(BenchSettings, "batch_sizes"))), show_default=True, help="Batch sizes of the latency sweep."),
        click.option("--accuracy-batch-size", default=default_of(BenchSettings, "accuracy_batch_size"), show_default=True, type=click.IntRange(min=1), help="Batch size of the accuracy pass (capped at an engine's max batch)."),
        click.option("--copies/--no-copies", "include_copies", default=default_of(BenchSettings, "include_copies"), show_default=True, help="Time host->device input and device->host output copies on GPU rows."),
        click.option("--device", default=default_of(RunnerOptions, "device"), show_default=True, help="Device of the PyTorch FP32/FP16/BF16 rows: cpu, cuda, cuda:N."),
        click.option("--threads", default=default_of(RunnerOptions, "threads"), type=click.IntRange(min=1), help="CPU threads for torch, ONNX Runtime intra-op and OpenVINO [physical cores]."),
        click.option("--compile", "compile_", is_flag=True, default=default_of(RunnerOptions, "compile"), help="Add a torch.compile FP32 row (compiles once per batch size)."),
        click.option("--channels-last", is_flag=True, default=default_of(RunnerOptions, "channels_last"), help="NHWC memory format for PyTorch rows."),
        click.option("--ort-provider", type=click.Choice(list(PROVIDERS)), default=default_of(RunnerOptions, "ort_provider"), show_default=True, help="ONNX Runtime execution provider."),
        click.option("--graph-optimization", type=click.Choice(GRAPH_OPTIMIZATION_LEVELS), default=default_of(RunnerOptions, "graph_optimization"), show_default=True, help="ONNX Runtime graph optimization level."),
        click.option("--ov-hint", type=click.Choice(PERFORMANCE_HINTS), default=default_of(RunnerOptions, "ov_hint"), show_default=True,
                     help="OpenVINO PERFORMANCE_HINT: latency (one stream) or throughput (several streams; each batch is split across one infer request per stream)."),
        click.option("--cuda-graph", is_flag=True, default=default_of(RunnerOptions, "cuda_graph"), help="Capture TensorRT enqueues in CUDA graphs."),
        click.option("--no-accuracy", is_flag=True, default=not default_of(BenchSettings, "accuracy"), help="Skip the accuracy pass (latency only; --verify needs it)."),
        click.option("--no-latency", is_flag=True, default=not default_of(BenchSettings, "latency"), help="Skip the latency sweep (accuracy only)."),
        click.option("--warmup", default=default_of(BenchSettings, "warmup_iterations"), show_default=True, type=click.IntRange(min=0), help=f"Warm-up iterations per batch size (and >= {default_of(BenchSettings, 'warmup_seconds'):g} s)."),
        click.option("--min-iterations", default=default_of(BenchSettings, "min_iterations"), show_default=True, type=click.IntRange(min=1), help="Timed iterations per batch size, at least."),
        click.option("--min-time", default=default_of(BenchSettings, "min_seconds"), show_default=True, type=click.FloatRange(min=0), help="Seconds of timed iterations per batch size, at least."),
        click.option("--max-time", default=default_of(BenchSettings, "max_seconds"), show_default=True, type=click.FloatRange(min=0), help="Seconds per batch size at most, even if the figure is still noisy."),
        click.option("--verify/--no-verify", default=verify_default, show_default=True, help=verify_help),
        click.option("--min-fp32-agreement", default=default_of(Thresholds, "fp32_min_agreement"), show_default=True, type=float, help="FP32 rows: top-1 agreement with FP32 PyTorch, %."),
        click.option("--min-fp16-agreement", default=default_of(Thresholds, "fp16_min_agreement"), show_default=True, type=float, help="FP16/BF16 rows: top-1 agreement with FP32 PyTorch, %."),
        click.option("--max-int8-drop", default=default_of(Thresholds, "int8_max_top1_drop"), show_default=True, type=float, help="int8 rows: top-1 drop against FP32 PyTorch, points."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def make_bench_config(options: dict):
    """RunnerOptions, BenchSettings and Thresholds|None from the shared options (popped from ``options``)."""
    from ..backends import parse_device

    device, device_id = parse_device(options.pop("device"))
    if options["no_accuracy"] and options["no_latency"]:
        raise UserError("--no-accuracy and --no-latency together leave nothing to measure",
                        hint="drop one of them: --no-latency measures accuracy only, --no-accuracy latency only")
    runner_options = RunnerOptions(
        backends=_parse_choices(options.pop("backends"), "--backend", BACKENDS),
        precisions=_parse_choices(options.pop("precisions"), "--precision", PRECISIONS),
        device=device,
        threads=options.pop("threads"),
        compile=options.pop("compile_"),
        channels_last=options.pop("channels_last"),
        ort_provider=options.pop("ort_provider"),
        graph_optimization=options.pop("graph_optimization"),
        cuda_graph=options.pop("cuda_graph"),
        device_id=device_id,
        ov_hint=options.pop("ov_hint"),
    )
    settings = BenchSettings(
        batch_sizes=parse_int_list(options.pop("batch_sizes"), "--batch-sizes"),
        include_copies=options.pop("include_copies"),
        accuracy_batch_size=options.pop("accuracy_batch_size"),
        warmup_iterations=options.pop("warmup"),
        min_iterations=options.pop("min_iterations"),
        min_seconds=options.pop("min_time"),
        max_seconds=options.pop("max_time"),
        accuracy=not options.pop("no_accuracy"),
        latency=not options.pop("no_latency"),
    )
    settings.validate()
    thresholds = Thresholds(options.pop("min_fp32_agreement"), options.pop("min_fp16_agreement"), options.pop("max_int8_drop"))
    thresholds.validate()
    verify = options.pop("verify")
    if verify and not settings.accuracy:
        ctx = click.get_current_context(silent=True)
        if ctx is not None and ctx.get_parameter_source("verify") is ParameterSource.DEFAULT:
            raise UserError("the pipeline verifies by default, and verifying needs the accuracy pass that --no-accuracy skips",
                            hint="add --no-verify to report latency only, or drop --no-accuracy")
        raise UserError("--verify needs the accuracy pass; drop --no-accuracy")
    return runner_options, settings, thresholds if verify else None


def print_bench_summary(results: dict, paths: dict) -> None:
    """A bench's summary (``bench``'s and ``pipeline``'s): the rows table and the rows not run (when
    progress is shown) and the verdict on stderr, the paths written as JSON on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..report import skipped_summary

    table = Table(title=f"{results['run_name']} (baseline {results['baseline']})")
    for column in ("row", "status", "top-1 %", "Δ pts", "agree %", "img/s @ largest bs", "speedup"):
        table.add_column(column, no_wrap=column == "row")
    for row in results["rows"]:
        if row["status"] == "skipped":
            continue  # one line below
        acc = row.get("accuracy") or {}
        ok = [e for e in row.get("latency", []) if e["status"] == "ok"]
        last = ok[-1] if ok else None
        table.add_row(
            row["name"],
            row["status"],
            f"{acc['top1']:.2f}" if acc else "–",
            f"{acc['delta_top1']:+.2f}" if acc else "–",
            f"{acc['agreement']:.2f}" if acc else "–",
            f"{last['images_per_sec']:,.0f} (bs {last['batch_size']})" if last else "–",
            f"{last['speedup_vs_baseline']:.2f}x" if last and last.get("speedup_vs_baseline") else "–",
        )
    console = Console(stderr=True)
    if not console.is_terminal:  # logs and CI: do not squeeze the table into 80 columns
        console = Console(stderr=True, width=140)
    if progress.enabled():
        console.print(table)
        not_run = skipped_summary(results["rows"])
        if not_run:
            console.print(escape(not_run), highlight=False)
        for row in results["rows"]:
            if row["status"] not in ("ok", "skipped"):
                console.print(f"[bold]{escape(row['name'])}[/bold] {row['status']}: {escape(str(row['reason']))}", highlight=False)
    verification = results.get("verification")
    if verification is not None:
        click.echo("verification: " + ("PASSED" if verification["passed"] else "FAILED"), err=True)
    echo_json({key: str(path) for key, path in paths.items()})


@click.command()
@click.option("--checkpoint", type=CHECKPOINT, help="FP32 checkpoint (the baseline), a file or pretrained:NAME [the one the export manifest names].")
@click.option("--export", "export_dirs", multiple=True, type=click.Path(), help="Export directory with manifest.json (ONNX files, TensorRT engines); repeat for several exports of one checkpoint (e.g. CPU- and TensorRT-scheme int8).")
@click.option("--quantized", "quantized_dirs", multiple=True, type=click.Path(), help="A `resnet-deploy quantize` artifact directory: a PyTorch int8 row (x86 CPU lowering); repeatable.")
@dataset_options
@bench_options
@click.option("--name", "run_name", default="bench", show_default=True, help="Run name: results go to OUTPUT_ROOT/NAME/.")
@click.option("--output-root", default="benchmarks/results", show_default=True, type=click.Path(), help="Folder holding one folder per run.")
@force_option(what="OUTPUT_ROOT/NAME")
def bench(checkpoint, export_dirs, quantized_dirs, load_data, run_name, output_root, force, **options):
    """Accuracy parity and speed of every backend against FP32 PyTorch eager, on this machine.

    Runs the full test split through each row (top-1, Δ vs FP32, top-1 agreement, logit differences),
    then a latency sweep per batch size (p50/p90/p99, images/s, peak memory). Writes results.json,
    report.md, latency_vs_batch.png and accuracy_vs_throughput.png to benchmarks/results/NAME/.
    Rows that cannot run here (no GPU, no TensorRT, no artifact) are summed up in one line with the
    reasons (report.md and the console; results.json keeps each skipped row).

    \b
    Examples:
      resnet-deploy bench --export exports/r20 --quantized calibration/r20 --data-dir DATA --name r20
      resnet-deploy bench --export exports/r20 --export exports/r20-cpu --data-dir DATA   (S8S8 and U8S8 int8)
      resnet-deploy bench --checkpoint runs/r20/best.pt --backend pytorch --batch-sizes 1,64 --data-dir DATA
      resnet-deploy bench --export exports/r20 --backend onnxruntime --precision int8 --verify --data-dir DATA
      resnet-deploy bench --export exports/r50 --backend tensorrt --device cuda --cuda-graph --no-copies --data-dir DATA
    Ctrl-C (SIGINT) or SIGTERM stops at the next timed iteration: what was measured is written (rows
    and batch sizes not reached are marked interrupted) and the command exits 130 or 143.
    Results of another checkpoint or test set already in OUTPUT_ROOT/NAME are not overwritten
    without --force (exit 2); a re-run of the same checkpoint on the same test set overwrites them.
    Exit codes: 0 ok, 1 a --verify threshold was missed (the report names the row), 2 bad input,
    130/143 interrupted by SIGINT/SIGTERM (partial results written).
    """
    from ..bench import benchmark_artifacts, raise_if_failed, raise_if_interrupted

    runner_options, settings, thresholds = make_bench_config(options)
    if checkpoint is None and not export_dirs:
        raise UserError("give --checkpoint, --export, or both", hint="e.g. resnet-deploy bench --export exports/r20 --data-dir DATA")
    check_run_name(run_name)
    dataset = load_data()
    output_dir = Path(output_root) / run_name
    with no_empty_folders_left(output_dir):
        results, paths = benchmark_artifacts(
            dataset,
            runner_options,
            settings,
            run_name=run_name,
            output_dir=output_dir,
            checkpoint=checkpoint,
            export_dirs=export_dirs,
            quantized_dirs=quantized_dirs,
            thresholds=thresholds,
            command=["resnet-deploy", *sys.argv[1:]],
            refuse_others=not force,  # checked once the checkpoint is loaded: its sha256 is computed once
        )
    print_bench_summary(results, paths)
    raise_if_interrupted(results, paths)
    raise_if_failed(results)


COMMANDS: list = [bench]
