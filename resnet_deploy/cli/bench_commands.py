"""``bench`` and ``pipeline``: measure every backend against FP32 PyTorch, and run the whole flow."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .. import progress
from ..backends.base import BACKENDS, PRECISIONS
from ..backends.openvino import PERFORMANCE_HINTS
from ..errors import UserError
from ..pipeline import INT8_TARGETS
from ..quantize_choices import DEFAULT_METHOD, METHODS
from .options import CHECKPOINT, dataset_options, echo_json, force_option, no_empty_folders_left, parse_int_list, refuse_overwrite, results_differences


def _parse_choices(text: str, option: str, choices: tuple[str, ...]) -> list[str]:
    values = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not values or values == ["all"]:
        return list(choices)
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise UserError(f"{option} accepts {', '.join(choices)} or all (comma-separated), got {', '.join(unknown)}")
    return values


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
    decorators = [
        click.option("--backend", "backends", default="all", show_default=True, help=f"Comma list of {', '.join(BACKENDS)}, or all. FP32 PyTorch eager always runs: it is the baseline."),
        click.option("--precision", "precisions", default="all", show_default=True, help=f"Comma list of {', '.join(PRECISIONS)}, or all."),
        click.option("--batch-sizes", default="1,8,32,128,256", show_default=True, help="Batch sizes of the latency sweep."),
        click.option("--accuracy-batch-size", default=500, show_default=True, type=click.IntRange(min=1), help="Batch size of the accuracy pass (capped at an engine's max batch)."),
        click.option("--copies/--no-copies", "include_copies", default=True, show_default=True, help="Time host->device input and device->host output copies on GPU rows."),
        click.option("--device", default="cpu", show_default=True, help="Device of the PyTorch FP32/FP16/BF16 rows: cpu, cuda, cuda:N."),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch, ONNX Runtime intra-op and OpenVINO [physical cores]."),
        click.option("--compile", "compile_", is_flag=True, help="Add a torch.compile FP32 row (compiles once per batch size)."),
        click.option("--channels-last", is_flag=True, help="NHWC memory format for PyTorch rows."),
        click.option("--ort-provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True, help="ONNX Runtime execution provider."),
        click.option("--graph-optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True, help="ONNX Runtime graph optimization level."),
        click.option("--ov-hint", type=click.Choice(PERFORMANCE_HINTS), default="latency", show_default=True,
                     help="OpenVINO PERFORMANCE_HINT: latency (one stream) or throughput (several streams; each batch is split across one infer request per stream)."),
        click.option("--cuda-graph", is_flag=True, help="Capture TensorRT enqueues in CUDA graphs."),
        click.option("--no-accuracy", is_flag=True, help="Skip the accuracy pass (latency only; --verify needs it)."),
        click.option("--no-latency", is_flag=True, help="Skip the latency sweep (accuracy only)."),
        click.option("--warmup", default=5, show_default=True, type=click.IntRange(min=0), help="Warm-up iterations per batch size (and >= 0.3 s)."),
        click.option("--min-iterations", default=20, show_default=True, type=click.IntRange(min=1), help="Timed iterations per batch size, at least."),
        click.option("--min-time", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Seconds of timed iterations per batch size, at least."),
        click.option("--max-time", default=5.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per batch size at most, even if the figure is still noisy."),
        click.option("--verify/--no-verify", default=verify_default, show_default=True, help=verify_help),
        click.option("--min-fp32-agreement", default=100.0, show_default=True, type=float, help="FP32 rows: top-1 agreement with FP32 PyTorch, %."),
        click.option("--min-fp16-agreement", default=99.9, show_default=True, type=float, help="FP16/BF16 rows: top-1 agreement with FP32 PyTorch, %."),
        click.option("--max-int8-drop", default=0.5, show_default=True, type=float, help="int8 rows: top-1 drop against FP32 PyTorch, points."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def make_bench_config(options: dict):
    """RunnerOptions, BenchSettings and Thresholds|None from the shared options (popped from ``options``)."""
    from ..backends import RunnerOptions, parse_device
    from ..bench import BenchSettings, Thresholds

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


def _print_summary(results: dict, paths: dict) -> None:
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
    from ..backends import load_export_manifest
    from ..bench import benchmark_artifacts, raise_if_failed, raise_if_interrupted
    from ..bench.run import benched_checkpoint
    from ..fileio import sha256_file

    runner_options, settings, thresholds = make_bench_config(options)
    if checkpoint is None and not export_dirs:
        raise UserError("give --checkpoint, --export, or both", hint="e.g. resnet-deploy bench --export exports/r20 --data-dir DATA")
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise UserError(f"--name must be a plain folder name, got {run_name!r}")
    dataset = load_data()
    output_dir = Path(output_root) / run_name
    benched = benched_checkpoint(checkpoint, [(Path(d), load_export_manifest(d)) for d in export_dirs[:1]])
    if benched.is_file():  # not a file: benchmark_artifacts refuses it, saying why
        refuse_overwrite(output_dir, "results.json", results_differences(benched, sha256_file(benched), dataset),
                         what="benchmark results", force=force, instead="give another --name")
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
        )
    _print_summary(results, paths)
    raise_if_interrupted(results, paths)
    raise_if_failed(results)


@click.command()
@click.option("--name", "run_name", required=True, help="Run name: runs/NAME, calibration/NAME-*, exports/NAME[-cpu], benchmarks/results/NAME.")
@click.option("--checkpoint", type=CHECKPOINT, help="Start from this FP32 checkpoint, a file or pretrained:NAME [pretrained:MODEL, the shipped one].")
@click.option("--model", default="resnet20", show_default=True, help="Model: its shipped checkpoint pretrained:MODEL is used, or with --train "
              "it is trained (resnet20/32/44/56/110, resnet18..152, plainN).")
@click.option("--train", "train_from_scratch", is_flag=True, help="Train --model from scratch (--epochs, --lr, ...) instead of using its shipped checkpoint.")
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(min=1), help="With --train: training epochs.")
@click.option("--train-batch-size", default=128, show_default=True, type=click.IntRange(min=1), help="With --train: training batch size.")
@click.option("--lr", default=0.1, show_default=True, type=float, help="With --train: peak training learning rate.")
@click.option("--seed", default=0, show_default=True, type=int, help="With --train: seed of the initial weights and the data order.")
@click.option("--train-device", default="auto", show_default=True, help="With --train: training device (auto, cpu, cuda, cuda:N).")
@dataset_options
@click.option("--quantization", type=click.Choice(["ptq", "qat", "both", "none"]), default="ptq", show_default=True, help="int8 by post-training calibration, quantization-aware fine-tuning, or both (exports use QAT's then).")
@click.option("--int8-targets", default=",".join(INT8_TARGETS), show_default=True, help="int8 schemes: cpu (U8S8, ONNX Runtime's fast CPU path), tensorrt (symmetric S8S8).")
@click.option("--calib-method", type=click.Choice(METHODS), default=None, help=f"Calibration method of PTQ and of QAT's starting observers [{DEFAULT_METHOD}, quantize's default] (see resnet-deploy quantize --help).")
@click.option("--calib-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Calibration images of PTQ and of QAT's starting observers (from the training split).")
@click.option("--qat-epochs", default=2, show_default=True, type=click.IntRange(min=1), help="With --quantization qat/both: fine-tuning epochs.")
@click.option("--qat-lr", default=1e-3, show_default=True, type=float, help="With --quantization qat/both: fine-tuning learning rate.")
@click.option("--fp16/--no-fp16", "export_fp16", default=True, show_default=True, help="Also export FP16 ONNX (and engine).")
@click.option("--tensorrt/--no-tensorrt", "build_tensorrt", default=None, help="Build TensorRT engines [when TensorRT can build here].")
@click.option("--compute-capability", help="Target GPU of the engines, e.g. 8.9 (TensorRT-RTX builds without a GPU).")
@click.option("--max-batch", default=256, show_default=True, type=click.IntRange(min=1), help="Largest batch of the engines' profile.")
@bench_options(verify_default=True)
@click.option("--force", is_flag=True, help="Redo every stage even when its artifacts are current.")
@click.option("--workdir", default=".", show_default=True, type=click.Path(), help="Folder holding runs/, calibration/, exports/, benchmarks/results/.")
def pipeline(run_name, checkpoint, model, train_from_scratch, epochs, train_batch_size, lr, seed, train_device, load_data, quantization, int8_targets,
             calib_method, calib_size, qat_epochs, qat_lr, export_fp16, build_tensorrt, compute_capability, max_batch,
             force, workdir, **options):
    """Start from the shipped pretrained:MODEL (or --checkpoint, or train with --train), quantize,
    export, bench every backend and write the verified report.

    Each stage is skipped when its inputs (settings, data, files, by sha256) and outputs are unchanged
    since the last run; --force redoes it. Stages that cannot run here (no TensorRT, no GPU) are listed
    as skipped with the reason in the report. Every option is checked before the first stage runs.
    The report is verified against the thresholds unless --no-verify: exit 1 when one is missed.
    SIGINT/SIGTERM during training save the progress (rerun the same command to continue); during
    the bench stage they write the partial results, as `bench` does; either way exit 130/143.

    \b
    Examples:
      resnet-deploy pipeline --data-dir ../shared/datasets/cifar10-jpeg.tar.xz --name r20    (the shipped ResNet20)
      resnet-deploy pipeline --train --model resnet20 --epochs 15 --data-dir DATA --name r20-scratch
      resnet-deploy pipeline --checkpoint runs/r20/last.pt --data-dir DATA --name r20 --quantization both
      resnet-deploy pipeline --train --dataset synthetic --epochs 1 --train-subset 512 --test-subset 256 --name smoke
    """
    from ..bench import raise_if_failed
    from ..pipeline import PipelineConfig, raise_if_stages_failed, run_pipeline

    runner_options, settings, thresholds = make_bench_config(options)
    targets = tuple(part.strip().lower() for part in int8_targets.split(",") if part.strip())
    starting = _starting_checkpoint(checkpoint, model, train_from_scratch)
    _check_pipeline_options(train_from_scratch, model, lr, seed, train_device, quantization, qat_lr, compute_capability, build_tensorrt)
    config = PipelineConfig(
        name=run_name, workdir=Path(workdir), checkpoint=starting, model=model, epochs=epochs,
        batch_size=train_batch_size, lr=lr, seed=seed, train_device=train_device, quantization=quantization,
        int8_targets=targets, calib_method=calib_method, calib_size=calib_size, qat_epochs=qat_epochs, qat_lr=qat_lr,
        fp16=export_fp16, tensorrt=build_tensorrt, compute_capability=compute_capability, max_batch=max_batch,
        runner_options=runner_options, bench_settings=settings, thresholds=thresholds, force=force,
        command=["resnet-deploy", *sys.argv[1:]],
    )
    config.validate()  # run_pipeline checks again; here it comes before any folder is made
    load_data.check()

    def load_checked_data():
        """The dataset, with the options that depend on its size checked before the first stage."""
        dataset = load_data()
        available = len(dataset.train_images)
        if train_from_scratch and train_batch_size > available:
            raise UserError(f"--train-batch-size {train_batch_size} is larger than the {available} training images; use at most {available}")
        if quantization in ("ptq", "both") and calib_size > available:
            raise UserError(f"--calib-size {calib_size} exceeds the {available} training images")
        return dataset

    written = [config.run_dir, config.results_dir, config.export_dir("tensorrt"), config.export_dir("cpu"),
               *(config.calibration_dir(kind, target) for kind in ("ptq", "qat") for target in INT8_TARGETS)]
    with no_empty_folders_left(*written):
        result = run_pipeline(config, load_checked_data)
    click.echo("stages:", err=True)
    for stage in result.stages:
        click.echo(f"  {stage.name:<22} {stage.status:<8} {stage.reason or ''}", err=True)
    if result.results is not None:
        _print_summary(result.results, result.paths)
    raise_if_stages_failed(result)
    if result.results is not None:
        raise_if_failed(result.results)


# Options that only shape training: given without --train they would be silently ignored.
TRAINING_OPTIONS = ("epochs", "train_batch_size", "lr", "seed", "train_device")
# Options of one kind of quantization, and the --quantization values that run it.
QAT_OPTIONS = (("qat_epochs", "qat_lr"), ("qat", "both"))
PTQ_OPTIONS = (("calib_method", "calib_size"), ("ptq", "both"))


def _given(ctx: click.Context, names) -> list[str]:
    """The options of ``names`` given on the command line, spelled as typed."""
    return [f"--{name.replace('_', '-')}" for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]


def _check_pipeline_options(train_from_scratch: bool, model: str, lr: float, seed: int, train_device: str, quantization: str,
                            qat_lr: float, compute_capability: str | None, build_tensorrt: bool | None) -> None:
    """Every check a later stage would make of the pipeline's own options, made before the first stage,
    with each option named as the pipeline spells it (--train-batch-size, not train's --batch-size)."""
    ctx = click.get_current_context()
    for (names, kinds), what in ((QAT_OPTIONS, "quantization-aware fine-tuning"), (PTQ_OPTIONS, "post-training calibration")):
        if quantization not in kinds and (given := _given(ctx, names)):
            raise UserError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to {what}, "
                            f"which --quantization {quantization} does not run",
                            hint=f"use --quantization {' or '.join(kinds)}, or drop {', '.join(given)}")
    for option, value, used in (("--lr", lr, train_from_scratch), ("--qat-lr", qat_lr, quantization in QAT_OPTIONS[1])):
        if used and not (value > 0 and math.isfinite(value)):
            raise UserError(f"{option} must be a positive number, got {value}")
    if train_from_scratch:
        from ..models import parse_model_name
        from ..train import resolve_device

        try:
            parse_model_name(model)
        except UserError as exc:
            raise UserError(f"--model: {exc}") from None
        if not 0 <= seed < 2**32:
            raise UserError(f"--seed must be in 0..{2**32 - 1}, got {seed}")
        try:
            resolve_device(train_device)
        except UserError as exc:  # train's own message names train's --device
            raise UserError(str(exc.args[0]).replace("--device", "--train-device"),
                            hint=exc.hint.replace("--device", "--train-device") if exc.hint else None) from None
    if compute_capability is not None:
        from ..tensorrt import parse_compute_capability

        parse_compute_capability(compute_capability)
    if build_tensorrt:  # --tensorrt makes a missing TensorRT an error: say so now, not after training
        from ..tensorrt import runtime

        runtime.import_tensorrt()
        if runtime.current_gpu() is None and not compute_capability:
            raise UserError("--tensorrt: no CUDA GPU here and no --compute-capability given",
                            hint="name the target GPU with --compute-capability (TensorRT-RTX), or drop --tensorrt")


def _starting_checkpoint(checkpoint: Path | None, model: str, train_from_scratch: bool) -> Path | str | None:
    """What the pipeline starts from: --checkpoint, else the shipped pretrained:MODEL; None (train) with --train."""
    from ..zoo import PREFIX

    ctx = click.get_current_context()
    if train_from_scratch:
        if checkpoint is not None:
            raise UserError("--train trains a new model and --checkpoint reuses one: give one of them")
        return None
    if checkpoint is not None and ctx.get_parameter_source("model") is ParameterSource.COMMANDLINE:
        raise UserError("--model names the shipped model to start from (or, with --train, the one to train); "
                        "--checkpoint brings its own", hint="drop --model or --checkpoint")
    ignored = [f"--{name.replace('_', '-')}" for name in TRAINING_OPTIONS
               if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if ignored:
        raise UserError(f"training option(s) {', '.join(ignored)} given without --train",
                        hint=f"add --train to train {model} from scratch, or drop them to start from {checkpoint or PREFIX + model}")
    return checkpoint if checkpoint is not None else PREFIX + model


COMMANDS: list = [bench, pipeline]
