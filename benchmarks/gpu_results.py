#!/usr/bin/env python
"""The GPU suite's results as a reader sees them, and their import into the repository.

    python benchmarks/gpu_results.py /work/.device/.../files      # a fetched $OUT of gpu_suite.py
        -> benchmarks/results/gpu-<date>/ (every file of it) and README.md's GPU table updated

README's table lives between two marker lines, ``<!-- gpu-results:start -->`` and
``<!-- gpu-results:end -->``; ``update_readme(text, table)`` replaces what is between them and nothing
else. The same functions write the suite's own report.md, summary and plots (``gpu_suite.py`` calls
them), so a figure is rendered one way wherever it appears. Every number comes from results.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resnet_deploy.errors import UserError  # noqa: E402
from resnet_deploy.fileio import atomic_path, atomic_write_text, read_json  # noqa: E402

RESULTS_FORMAT = "resnet-deploy/gpu-suite"
README_START = "<!-- gpu-results:start -->"
README_END = "<!-- gpu-results:end -->"
SPEEDUP_NOTE = ("each row's speedup is against the `pytorch-fp32` baseline measured in the same row group "
                "(eager rows; compile and ONNX Runtime; max-autotune), whose repeats give the run-to-run spread")


# ============================================================================================ reading


def load_results(out_dir: str | Path) -> dict:
    results = read_json(Path(out_dir) / "results.json", "GPU suite results")
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{out_dir}/results.json is not a GPU suite results file (format {RESULTS_FORMAT!r})")
    return results


def stage(results: dict, name: str) -> dict:
    """The stage's record; an empty one when the run did not include it."""
    return next((record for record in results["stages"] if record["name"] == name), {})


def stage_result(results: dict, name: str) -> dict:
    return stage(results, name).get("result") or {}


def model_keys(results: dict, kind: str) -> list[str]:
    return [record["name"].partition("-")[2] for record in results["stages"] if record["name"].startswith(kind + "-")]


def fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def table_batches(results: dict) -> list[int]:
    """The batch sizes the benchmark measured, smallest first (the tables show p50 at the smallest)."""
    return sorted(results["settings"]["bench"]["batch_sizes"])


def latency_at(row: dict, batch_size: int) -> dict | None:
    return next((e for e in row.get("latency", []) if e["batch_size"] == batch_size and e["status"] == "ok"), None)


def device_line(results: dict) -> str:
    env = stage_result(results, "environment")
    smi = (env.get("nvidia_smi") or {}).get("gpus") or [{}]
    gpus = env.get("bench_environment", {}).get("hardware", {}).get("gpus") or []
    name = gpus[0]["name"] if gpus else "no GPU"
    software = env.get("bench_environment", {}).get("software", {})
    return (f"{name}, driver {smi[0].get('driver_version', '–')}, torch {software.get('torch', '–')}, "
            f"CUDA {env.get('torch_cuda') or '–'}, cuDNN {env.get('cudnn') or '–'}, Triton {env.get('triton') or '–'}, "
            f"torchao {env.get('packages', {}).get('torchao') or '–'}, ONNX Runtime {software.get('onnxruntime') or '–'}")


# ============================================================================================ tables


def stages_table(results: dict) -> list[str]:
    lines = ["| stage | status | box s | wall s | detail |", "|---|---|---|---|---|"]
    for record in results["stages"]:
        lines.append(f"| {record['name']} | {record['status']} | {fmt(record.get('box_s'), '.0f')} | "
                     f"{fmt(record.get('wall_s'), '.1f')} | {record.get('reason') or ''} |")
    return lines


def training_table(results: dict) -> list[str]:
    marks = results["settings"]["accuracy_marks"]
    goal = results["settings"]["goal_top1"]
    marks = sorted({*marks, goal})
    header = ["model", "status", "epochs (limited by)", "final top-1 %", "training s", *[f"s to {m:g}%" for m in marks],
              "epoch 1 excess s", "images/s", "peak MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in model_keys(results, "train"):
        record = stage(results, f"train-{key}")
        result = record.get("result") or {}
        summary = result.get("summary") or {}
        planned = result.get("plan") or {}
        time_to = summary.get("time_to") or {}
        epochs = f"{summary.get('epochs_done', 0)} of {planned.get('epochs', '–')} ({planned.get('limited_by', '–')})"
        model = result.get("recipe", {}).get("model", key)
        cells = [key if model == key else f"{key} (trained as {model})", record.get("status", "–"), epochs,
                 fmt(summary.get("final_top1")), fmt(summary.get("train_s"), ".1f"),
                 *[fmt((time_to.get(f"{m:g}") or {}).get("train_s"), ".1f") for m in marks],
                 fmt(summary.get("first_epoch_excess_s"), ".1f"), fmt(summary.get("train_images_per_sec"), ",.0f"),
                 fmt(summary.get("peak_memory_mb"), ",.0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def inference_table(results: dict) -> list[str]:
    batches = table_batches(results)
    header = ["model", "row", "top-1 %", "agreement %", "max abs logit diff", f"p50 ms bs{batches[0]}",
              *[f"img/s bs{b}" for b in batches[1:]], f"speedup bs{batches[-1]}", f"peak MiB bs{batches[-1]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in model_keys(results, "bench"):
        for row in (stage_result(results, f"bench-{key}").get("bench") or {}).get("rows", []):
            lines.append(inference_line(key, row, batches))
    for row in (stage_result(results, "tensorrt").get("bench") or {}).get("rows", []):
        if row["backend"] == "tensorrt":
            lines.append(inference_line("tensorrt", row, batches))
    return lines


def inference_line(key: str, row: dict, batches: list[int]) -> str:
    if row["status"] != "ok" and not row.get("accuracy"):
        return f"| {key} | `{row['name']}` | **{row['status']}**: {row.get('reason') or ''} |" + " |" * (len(batches) + 4)
    accuracy = row.get("accuracy") or {}
    first, *rest = (latency_at(row, b) for b in batches)
    largest = rest[-1] or {}
    cells = [key, f"`{row['name']}`", fmt(accuracy.get("top1")), fmt(accuracy.get("agreement")), fmt(accuracy.get("max_abs_diff"), ".2g"),
             fmt((first or {}).get("p50_ms"), ".3f"), *[fmt((e or {}).get("images_per_sec"), ",.0f") for e in rest],
             fmt(largest.get("speedup_vs_baseline"), ".2f"), fmt(largest.get("peak_memory_mb"), ",.0f")]
    return "| " + " | ".join(cells) + " |"


def int8_table(results: dict) -> list[str]:
    lines = ["| model | int8 scheme | FP32 top-1 % | int8 top-1 % | change, points | agreement % | calibration s |",
             "|---|---|---|---|---|---|---|"]
    for row in stage_result(results, "int8").get("rows", []):
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {row['target']} | **{row['status']}**: {row.get('reason') or ''} | | | | |")
            continue
        lines.append(f"| {row['model']} | {row['target']} | {fmt(row['fp32_top1'])} | {fmt(row['int8_top1'])} | "
                     f"{fmt(row['delta_top1'], '+.2f')} | {fmt(row['agreement_top1'])} | {fmt(row['calibration_s'], '.1f')} |")
    return lines


def baseline_spread(bench: dict, largest: int) -> str | None:
    """The baseline's throughput at batch ``largest`` over its repeated measurements (one per row group)."""
    values = [latency_at(row, largest)["images_per_sec"] for row in (bench.get("baseline_repeats") or {}).values()
              if latency_at(row, largest)]
    if len(values) < 2:
        return None
    return (f"the baseline measured {len(values)} times at batch {largest}: {min(values):,.0f}..{max(values):,.0f} images/s "
            f"(spread {100 * (max(values) - min(values)) / statistics.median(values):.1f}% of the median)")


def readme_table(results: dict) -> str:
    """The Markdown README shows between its GPU markers: device, training, inference and int8 tables."""
    lines = [f"GPU suite run of {results['created'][:10]} ({results['mode']} mode): {device_line(results)}. "
             f"Source: `benchmarks/results/{results_folder_name(results)}/` (report.md, results.json).", "",
             "Training (the shared JPEG CIFAR-10; seconds are training time as the trainer measures it, compile included in epoch 1):", "",
             *training_table(results), "",
             f"Inference on the GPU (full test split; agreement is top-1 agreement with `pytorch-fp32`, TF32 off; "
             f"host-device copies excluded from timing; {SPEEDUP_NOTE}):", "",
             *inference_table(results), "", "int8 PTQ (calibration and evaluation on the device's host CPU):", "",
             *int8_table(results)]
    tensorrt = stage(results, "tensorrt")
    if tensorrt and tensorrt.get("status") != "ok":
        lines += ["", f"TensorRT: {tensorrt.get('status')}: {tensorrt.get('reason') or ''}"]
    return "\n".join(lines)


def update_readme(text: str, table: str) -> str:
    """``text`` with everything between the GPU markers replaced by ``table``; the rest untouched."""
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"README must hold {README_START} and {README_END} once each")
    head, rest = text.split(README_START)
    if README_END not in rest:
        raise ValueError(f"{README_END} comes before {README_START} in README")
    _, tail = rest.split(README_END)
    return f"{head}{README_START}\n{table.strip()}\n{README_END}{tail}"


# ============================================================================================ report


def demote_headings(markdown: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def render_report(results: dict) -> str:
    """report.md: the run, its stages, the tables, then each model's full benchmark report."""
    from resnet_deploy.report import render_markdown

    settings = results["settings"]
    lines = [f"# GPU suite ({results['mode']})", "",
             f"- created {results['created']}, finished {results.get('finished') or '– (still running or killed)'}, "
             f"{fmt(results.get('elapsed_s'), '.0f')} s of a {settings['deadline_s']:.0f} s deadline"
             + (f"; stopped by {results['stopped_by']}" if results.get("stopped_by") else ""),
             f"- device: {device_line(results)}",
             f"- command: `{' '.join(results.get('command') or [])}`", "", "## Stages", "", *stages_table(results), "",
             f"## Training (goal: {settings['goal_top1']:g}% top-1 in under {settings['goal_train_s']:g} s)", "",
             *training_table(results), "", "## Inference", "", f"Speedups: {SPEEDUP_NOTE}.", "", *inference_table(results), ""]
    for key in model_keys(results, "bench"):
        spread = baseline_spread(stage_result(results, f"bench-{key}").get("bench") or {}, table_batches(results)[-1])
        if spread:
            lines.append(f"- {key}: {spread}")
    lines += ["", "## int8 PTQ", "", *int8_table(results), ""]
    tensorrt = stage(results, "tensorrt")
    if tensorrt:
        lines += ["## TensorRT", "", f"{tensorrt.get('status')}: {tensorrt.get('reason') or 'rows in the inference table'}", ""]
    for key in [*model_keys(results, "bench"), "tensorrt"]:
        bench = stage_result(results, key if key == "tensorrt" else f"bench-{key}").get("bench")
        if bench:
            lines += [f"## Details: {key}", "", demote_headings(render_markdown(bench)), ""]
    return "\n".join(lines)


def summary_lines(results: dict) -> list[str]:
    """The few lines printed last (a device call returns only the end of the output)."""
    lines = ["", "== GPU suite summary =="]
    lines += [f"{r['name']:<16} {r['status']:<12} {fmt(r.get('wall_s'), '6.1f')} s  {r.get('reason') or ''}" for r in results["stages"]]
    for key in model_keys(results, "train"):
        summary = stage_result(results, f"train-{key}").get("summary") or {}
        if summary.get("epochs_done"):
            goal = summary["goal"]
            reached = (summary["time_to"].get(f"{goal['top1']:g}") or {}).get("train_s")
            lines.append(f"{key}: {summary['epochs_done']} epochs, top-1 {summary['final_top1']:.2f}%, {summary['train_s']:.1f} s training; "
                         f"{goal['top1']:g}% at {fmt(reached, '.1f')} s (goal {'met' if goal['met'] else 'not met'})")
    for key in model_keys(results, "bench"):
        rows = (stage_result(results, f"bench-{key}").get("bench") or {}).get("rows", [])
        largest = table_batches(results)[-1]
        fastest = max(((latency_at(r, largest) or {}).get("images_per_sec") or 0, r["name"]) for r in rows) if rows else (0, "")
        if fastest[0]:
            lines.append(f"{key}: fastest at batch {largest}: {fastest[1]} {fastest[0]:,.0f} images/s")
    lines.append(f"elapsed {fmt(results.get('elapsed_s'), '.0f')} s")
    return lines


# ============================================================================================ plots


def plot_time_to_accuracy(results: dict, path: str | Path) -> bool:
    """Test top-1 against cumulative training seconds, one line per trained model; False if none."""
    curves = {key: (stage_result(results, f"train-{key}").get("summary") or {}).get("curve") for key in model_keys(results, "train")}
    curves = {key: curve for key, curve in curves.items() if curve}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for key, curve in curves.items():
        ax.plot([p["train_s"] for p in curve], [p["test_top1"] for p in curve], marker=".", label=key)
    settings = results["settings"]
    ax.axhline(settings["goal_top1"], color="grey", linestyle="--", linewidth=1, label=f"goal {settings['goal_top1']:g}%")
    ax.axvline(settings["goal_train_s"], color="grey", linestyle=":", linewidth=1, label=f"{settings['goal_train_s']:g} s")
    ax.set_xlabel("training time, s (cumulative epoch times; compile in epoch 1)")
    ax.set_ylabel("test top-1, %")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"time to accuracy: {device_line(results).split(',')[0]}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def plot_latency_of(results: dict, key: str, path: str | Path) -> bool:
    """The library's latency plot of one model's benchmark; False when it has none."""
    from resnet_deploy.report import plot_latency

    bench = stage_result(results, f"bench-{key}").get("bench")
    if not bench:
        return False
    plot_latency(bench, path)
    return True


# ============================================================================================ import


def results_folder_name(results: dict) -> str:
    return ("gpu-smoke-" if results["mode"] == "smoke" else "gpu-") + results["created"][:10]


def import_results(out_dir: str | Path, results_root: str | Path, *, force: bool = False, allow_smoke: bool = False) -> Path:
    """Copy a fetched $OUT into ``results_root/gpu-<date>/``; returns that folder."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    if results["mode"] == "smoke" and not allow_smoke:
        raise ValueError(f"{out_dir} holds a smoke run (CPU, tiny settings): not GPU results; pass --allow-smoke to import it anyway")
    target = Path(results_root) / results_folder_name(results)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for source in sorted(p for p in out_dir.iterdir() if p.is_file()):
        shutil.copyfile(source, target / source.name)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="the fetched $OUT of a gpu_suite.py run")
    parser.add_argument("--results-root", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--readme", default=str(REPO / "README.md"), help="README to update ('' to leave it alone)")
    parser.add_argument("--force", action="store_true", help="replace an existing results folder")
    parser.add_argument("--allow-smoke", action="store_true", help="import a smoke run too (for tests)")
    args = parser.parse_args(argv)
    try:
        target = import_results(args.out_dir, args.results_root, force=args.force, allow_smoke=args.allow_smoke)
        print(f"imported {args.out_dir} -> {target}")
        if args.readme:
            readme = Path(args.readme)
            atomic_write_text(readme, update_readme(readme.read_text(encoding="utf-8"), readme_table(load_results(target))))
            print(f"updated the GPU table of {readme}")
    except (ValueError, FileExistsError, OSError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
