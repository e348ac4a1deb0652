"""Benchmark reports: the results JSON (schema below), a Markdown report and PNG plots.

``write_report(results, directory)`` writes, atomically:

``results.json``                 the full results document, valid against ``RESULTS_SCHEMA``
``report.md``                    accuracy parity, throughput/speedup and latency tables, settings, skips,
                                 verification verdict
``latency_vs_batch.png``         p50 latency and throughput against batch size, one line per row
``accuracy_vs_throughput.png``   top-1 against images/s at the largest common batch size
                                 (both plots: ``plots.py``, with matplotlib, extra ``[plots]``)

Results schema (``format`` "resnet-deploy/bench", ``version`` 1; docs/results-schema.md explains each
field; the machine-checkable JSON Schema is ``schemas/results.schema.json``, package data, loaded as
``RESULTS_SCHEMA``)::

    run_name, created (ISO 8601 UTC), command (argv or null)
    hardware: cpu_model, logical_cpus, physical_cores, affinity_cpus, memory_gb, platform,
              load_average, cpu_competition (null | {window_seconds, cpus, other_cpu_seconds,
              other_share, warn_share, competing}), gpus: [{name, compute_capability, memory_gb}]
    software: python, torch, torch_threads, cuda, numpy, onnxruntime, onnxruntime_providers,
              tensorrt ({flavour, version} or null), openvino (version or null), resnet_deploy
    model:    {spec, checkpoint: {path, sha256}, num_classes}
    dataset:  {name, split: "test", size, source}
    baseline: row name every delta and speedup is against ("pytorch-fp32")
    settings: BenchSettings (batch_sizes, include_copies, accuracy_batch_size, warm-up and timing limits)
    rows: [{name, backend, precision, device, status: ok|skipped|error|nonfinite|interrupted, reason,
            settings: {...backend specific: threads, provider, graph optimization, int8 scheme...},
            accuracy: null | {top1, top5, loss, count, delta_top1, delta_top5, agreement,
                              max_abs_diff, mean_abs_diff, batch_size},
            latency: [{batch_size, status: ok|oom|error|nonfinite|skipped|interrupted, message,
                       iterations, warmup_iterations, first_call_ms, p50_ms, p90_ms, p99_ms, mean_ms,
                       std_ms, min_ms, images_per_sec, speedup_vs_baseline, peak_memory_mb,
                       memory_kind, timer, host_device_copies}]}]
    verification: null | {thresholds: {fp32_min_agreement, fp16_min_agreement, int8_max_top1_drop},
                          passed, failures: [{row, check, value, threshold, message}]}
    interrupted: null | {signal, signal_name, row, phase: start|accuracy|latency|after, message}: set when
                 SIGINT/SIGTERM stopped the run; the figures present are complete, the rest is missing
    pipeline (optional): {stages: [{name, status, reason, ...}]} when written by ``resnet-deploy pipeline``
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text, write_json
from .optional import PLOTS_INSTALL, SCHEMA_INSTALL, has_jsonschema, has_matplotlib
from .plots import ok_entries as _ok_entries
from .plots import gpu_copies_measured, plot_accuracy_vs_throughput, plot_latency

log = logging.getLogger(__name__)


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in ``resnet_deploy/schemas/`` (package data, so installed with the package)."""
    return json.loads((resources.files("resnet_deploy") / "schemas" / name).read_text(encoding="utf-8"))


RESULTS_SCHEMA_FILE = "results.schema.json"  # in resnet_deploy/schemas/
RESULTS_SCHEMA: dict[str, Any] = load_schema(RESULTS_SCHEMA_FILE)


def validate_results(results: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if ``results`` does not follow RESULTS_SCHEMA.

    Needs ``jsonschema`` (extra ``[schema]``, also in ``[dev]``); without it nothing is checked and a
    message at INFO level says so (the results are written either way).
    """
    if not has_jsonschema():
        log.info(f"results not checked against the schema ({RESULTS_SCHEMA_FILE}): jsonschema is not installed ({SCHEMA_INSTALL})")
        return
    import jsonschema

    jsonschema.validate(results, RESULTS_SCHEMA)


# ============================================================================================ markdown


def _fmt(value, spec: str = ".2f", empty: str = "–") -> str:
    if value is None:
        return empty
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _batch_sizes(results: dict) -> list[int]:
    sizes = set(results["settings"].get("batch_sizes", []))
    for row in results["rows"]:
        sizes.update(e["batch_size"] for e in row.get("latency", []))
    return sorted(sizes)


def _describe_settings(row: dict) -> str:
    settings = row.get("settings") or {}
    parts = []
    for key in ("execution", "execution_provider", "intra_op_threads", "torch_threads", "graph_optimization", "autocast", "cuda_graph"):
        if settings.get(key) not in (None, False, ""):
            label = {"intra_op_threads": "intra-op threads", "torch_threads": "torch threads", "graph_optimization": "graph opt"}.get(key, key.replace("_", " "))
            parts.append(f"{label} {settings[key]}" if key not in ("execution", "execution_provider") else str(settings[key]))
    quant = settings.get("quantization")
    if quant:
        parts.append(f"int8 {quant['label']} (activations {quant['activations']}, weights {quant['weights']}, {quant['format']})")
    if settings.get("export_scheme"):
        parts.append(f"export scheme `{settings['export_scheme']}`")
    for key in ("onnx", "engine"):
        if settings.get(key):
            parts.append(f"`{settings[key]}`")
    if settings.get("profile_batch"):
        parts.append(f"profile batch {settings['profile_batch'][0]}..{settings['profile_batch'][1]}")
    artifact = settings.get("artifact")
    if isinstance(artifact, dict) and artifact.get("path"):
        if artifact.get("target"):
            parts.append(f"quantized for `{artifact['target']}` ({artifact.get('method') or '?'} calibration)")
        parts.append(f"`{artifact['path']}`")
    return ", ".join(parts) or "–"



def render_markdown(results: dict, plots: bool = True) -> str:
    """The human report: what was measured, on what, and whether it passed (``plots``: with the two
    plots write_report draws beside it). One function per section, in the report's order."""
    # Rows that cannot run on this machine are one line below, not rows of dashes in every table.
    rows = [row for row in results["rows"] if row["status"] != "skipped"]
    lines = _title_lines(results) + _context_lines(results)
    lines += _accuracy_section(rows, show_top5=results["model"].get("num_classes", 10) > 10)
    if any(_ok_entries(row) for row in rows):
        lines += _throughput_section(rows, _batch_sizes(results), results["baseline"]) + _latency_section(rows)
    lines += _int8_scheme_note(rows)
    lines += _settings_section(rows) + _failed_section(rows) + _pipeline_section(results.get("pipeline"))
    lines += _verification_section(results.get("verification"), interrupted=bool(results.get("interrupted")))
    if plots:
        lines += ["## Plots", "", "![latency vs batch size](latency_vs_batch.png)", "", "![accuracy vs throughput](accuracy_vs_throughput.png)", ""]
    return "\n".join(lines)


def _table_head(header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def _title_lines(results: dict) -> list[str]:
    """The run's name, and a warning first when a signal stopped the run."""
    lines = [f"# Benchmark `{results['run_name']}`", ""]
    interrupted = results.get("interrupted")
    if interrupted:
        lines += [
            f"> **Interrupted**: {interrupted['message']}. The figures below are "
            "complete measurements; rows and batch sizes marked **interrupted** were not measured, and the "
            "thresholds were not checked. Run the same command again for a complete benchmark.",
            "",
        ]
    return lines


def _context_lines(results: dict) -> list[str]:
    """What was measured on what: model and test set, hardware, software, timing method, baseline, skips."""
    model, dataset, hw = results["model"], results["dataset"], results["hardware"]
    spec, checkpoint = model["spec"], model["checkpoint"]
    lines = [
        f"**Model** {spec.get('name')} ({model['num_classes']} classes), checkpoint `{checkpoint['path']}` "
        f"(sha256 `{str(checkpoint['sha256'])[:12]}`). **Test set** {dataset['name']}, "
        f"{dataset['size']:,} images (full test split unless a subset was asked for)."
    ]
    gpus = ", ".join(f"{g['name']} (SM {g['compute_capability']})" for g in hw.get("gpus", [])) or "none"
    lines.append(
        f"**Hardware** {hw['cpu_model']}, {hw['physical_cores']} physical cores ({hw.get('logical_cpus')} logical, "
        f"{hw.get('affinity_cpus')} usable), {_fmt(hw.get('memory_gb'), '.1f')} GB RAM; GPU: {gpus}."
    )
    lines += _competition_line(hw)
    lines += [_software_line(results["software"]), _timing_line(results)]
    lines.append(f"**Baseline** `{results['baseline']}`: every delta, agreement and speedup is against it.")
    not_run = skipped_summary(results["rows"], code=True)
    if not_run:
        lines.append(f"**Skipped**: {not_run} (results.json keeps each row with its reason).")
    return lines + [""]


def _software_line(sw: dict) -> str:
    trt = sw.get("tensorrt")
    return (
        f"**Software** torch {sw['torch']}, onnxruntime {sw.get('onnxruntime') or 'not installed'} "
        f"({', '.join(sw.get('onnxruntime_providers') or []) or '–'}), TensorRT "
        f"{(trt['flavour'] + ' ' + trt['version']) if trt else 'not installed'}, OpenVINO {sw.get('openvino') or 'not installed'}, "
        f"Python {sw['python']}."
    )


def _timing_line(results: dict) -> str:
    settings = results["settings"]
    # The copies setting only means something for GPU rows, so a CPU-only run does not mention it.
    gpu_copies = gpu_copies_measured(results)
    clocks = ("CPU rows timed with `perf_counter_ns`, GPU rows with CUDA events. Host<->device copies on GPU rows: "
              f"**{'/'.join(gpu_copies)}**. ") if gpu_copies else "Timed with `perf_counter_ns`. "
    return (
        f"**Timing** per batch size: warm-up (>= {settings.get('warmup_iterations')} iterations and "
        f"{settings.get('warmup_seconds')} s), then >= {settings.get('min_iterations')} synchronised iterations and "
        f">= {settings.get('min_seconds')} s until the mean's relative standard error is <= "
        f"{100 * settings.get('target_rel_error', 0):.0f}% (at most {settings.get('max_seconds')} s). {clocks}"
        f"Throughput = batch / mean latency. Accuracy pass batch size {settings.get('accuracy_batch_size')}."
    )


def _accuracy_section(rows: list[dict], show_top5: bool) -> list[str]:
    header = ["Row", "Precision", "Device", "Top-1 %", "Δ top-1 (pts)"]
    if show_top5:
        header += ["Top-5 %", "Δ top-5 (pts)"]
    header += ["Agreement %", "max \\|Δ logit\\|", "mean \\|Δ logit\\|", "Status"]
    lines = ["## Accuracy parity", ""] + _table_head(header)
    for row in rows:
        acc = row.get("accuracy")
        cells = [f"`{row['name']}`", row["precision"], row["device"]]
        if acc:
            cells += [_fmt(acc["top1"]), _fmt(acc["delta_top1"], "+.2f")]
            if show_top5:
                cells += [_fmt(acc["top5"]), _fmt(acc["delta_top5"], "+.2f")]
            cells += [_fmt(acc["agreement"]), _fmt(acc["max_abs_diff"], ".2e"), _fmt(acc["mean_abs_diff"], ".2e")]
        else:
            cells += ["–"] * (7 if show_top5 else 5)
        cells.append(row["status"] if row["status"] == "ok" else f"**{row['status']}**")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _throughput_section(rows: list[dict], sizes: list[int], baseline: str) -> list[str]:
    """Images/s per batch size (a column each), with the speedup over the baseline row."""
    lines = [f"## Throughput (images/s; speedup vs `{baseline}`)", ""] + _table_head(["Row"] + [f"bs {b}" for b in sizes])
    for row in rows:
        if not row.get("latency"):
            continue
        by_size = {e["batch_size"]: e for e in row["latency"]}
        lines.append(f"| `{row['name']}` | " + " | ".join(_throughput_cell(by_size.get(size)) for size in sizes) + " |")
    return lines + [""]


def _throughput_cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    if entry["status"] != "ok":
        return entry["status"].upper()
    speed = entry.get("speedup_vs_baseline")
    return f"{entry['images_per_sec']:,.0f}" + (f" ({speed:.2f}x)" if speed else "")


def _latency_section(rows: list[dict]) -> list[str]:
    lines = [
        "## Latency",
        "",
        "| Row | Batch | p50 ms | p90 ms | p99 ms | mean ms | images/s | speedup | peak memory MB | iterations | copies |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for entry in row.get("latency", []):
            if entry["status"] != "ok":
                lines.append(f"| `{row['name']}` | {entry['batch_size']} | **{entry['status']}**: {entry.get('message') or ''} |||||||||")
                continue
            memory = f"{_fmt(entry.get('peak_memory_mb'), '.0f')} ({'CUDA alloc' if entry.get('memory_kind') == 'cuda_allocated' else 'RSS'})"
            lines.append(
                f"| `{row['name']}` | {entry['batch_size']} | {entry['p50_ms']:.3f} | {entry['p90_ms']:.3f} | {entry['p99_ms']:.3f} | "
                f"{entry['mean_ms']:.3f} | {entry['images_per_sec']:,.0f} | {_fmt(entry.get('speedup_vs_baseline'), '.2f')}x | "
                f"{memory} | {entry['iterations']} | {entry['host_device_copies']} |"
            )
    return lines + [""]


def _settings_section(rows: list[dict]) -> list[str]:
    lines = ["## Rows and their settings", ""]
    for row in rows:
        lines.append(f"- `{row['name']}` ({row['backend']}, {row['precision']}, {row['device']}): {_describe_settings(row)}")
    return lines + [""]


def _failed_section(rows: list[dict]) -> list[str]:
    problems = [row for row in rows if row["status"] != "ok"]
    if not problems:
        return []
    return ["## Failed rows", ""] + [f"- `{row['name']}` **{row['status']}**: {row['reason']}" for row in problems] + [""]


def _pipeline_section(pipeline: dict | None) -> list[str]:
    """The stages of ``resnet-deploy pipeline`` when it wrote the results (absent for a plain bench)."""
    if not pipeline:
        return []
    lines = ["## Pipeline stages", "", "| Stage | Status | Detail |", "|---|---|---|"]
    for stage in pipeline["stages"]:
        lines.append(f"| {stage['name']} | {stage['status']} | {stage.get('reason') or ''} |")
    return lines + [""]


def _verification_section(verification: dict | None, interrupted: bool) -> list[str]:
    lines = ["## Verification", ""]
    if verification is None and interrupted:
        lines.append("Not run: the benchmark was interrupted, so its rows are incomplete.")
    elif verification is None:
        lines.append("Not requested (run with `--verify` to gate on the thresholds).")
    else:
        thresholds = verification["thresholds"]
        lines.append(
            f"Thresholds: FP32 rows agree >= {thresholds['fp32_min_agreement']}% with FP32 PyTorch, FP16/BF16 rows >= "
            f"{thresholds['fp16_min_agreement']}%, int8 rows lose <= {thresholds['int8_max_top1_drop']} top-1 points."
        )
        lines.append("")
        if verification["passed"]:
            lines.append("**PASSED**: every row that ran met its threshold.")
        else:
            lines.append(f"**FAILED** ({len(verification['failures'])}):")
            lines += [f"- {failure['message']}" for failure in verification["failures"]]
    return lines + [""]


def skipped_summary(rows: list[dict], code: bool = False) -> str | None:
    """One line for the rows that cannot run on this machine (status skipped), names grouped by
    reason; None when there are none. ``code``: names in Markdown backticks."""
    by_reason: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] == "skipped":
            by_reason.setdefault(str(row.get("reason")), []).append(f"`{row['name']}`" if code else row["name"])
    if not by_reason:
        return None
    count = sum(len(names) for names in by_reason.values())
    groups = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())
    return f"{count} row{' cannot' if count == 1 else 's cannot'} run here: {groups}"


def _competition_line(hw: dict) -> list[str]:
    """What other processes took of the CPUs while the rows ran (hardware.cpu_competition), warned
    about above its threshold. The load average is no such measure: it still counts a previous stage
    of the same pipeline for minutes, so it is shown without a verdict when nothing else was measured."""
    competition = hw.get("cpu_competition")
    if competition:
        share, cpus = 100 * competition["other_share"], competition["cpus"]
        verdict = (
            f" (over {100 * competition['warn_share']:.0f}%): other processes were competing for the cores, so CPU "
            "figures are lower and noisier than on an idle machine." if competition["competing"] else "."
        )
        return [
            f"**Other processes** used {share:.1f}% of the {cpus} usable CPUs' time while the rows ran "
            f"({competition['other_cpu_seconds']:.1f} CPU-s in {competition['window_seconds']:.1f} s){verdict}"
        ]
    load = hw.get("load_average")
    if load:
        return [
            f"**Load average** when the run started (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
            "(other processes' CPU use while the rows ran was not measured)."
        ]
    return []


def _int8_scheme_note(rows: list[dict]) -> list[str]:
    """Why the CPU int8 row uses U8S8: show U8S8 and S8S8 side by side when both ran."""
    by_label: dict[str, dict] = {}
    for row in rows:
        quant = (row.get("settings") or {}).get("quantization")
        if row["backend"] == "onnxruntime" and row["device"] == "cpu" and quant and _ok_entries(row):
            by_label.setdefault(quant["label"], row)
    if not {"U8S8", "S8S8"} <= set(by_label):
        return []
    u8, s8 = by_label["U8S8"], by_label["S8S8"]
    common = sorted(set(_ok_entries(u8)) & set(_ok_entries(s8)))
    if not common:
        return []
    size = common[-1]
    fast, slow = _ok_entries(u8)[size]["images_per_sec"], _ok_entries(s8)[size]["images_per_sec"]
    return [
        "## int8 on the CPU: U8S8 vs S8S8",
        "",
        f"At batch {size}, `{u8['name']}` (unsigned 8-bit activations, signed weights) ran at {fast:,.0f} images/s and "
        f"`{s8['name']}` (signed symmetric activations, TensorRT's scheme) at {slow:,.0f} images/s ({fast / slow:.2f}x). "
        "ONNX Runtime's x86 int8 convolution kernels (VNNI/AVX2 u8*s8 dot products) take unsigned activations; "
        "signed activations leave that fast path, so the CPU deployment uses the U8S8 file and the S8S8 file is for TensorRT.",
        "",
    ]


# ============================================================================================ writing


def write_report(results: dict, directory: str | os.PathLike) -> dict[str, Path]:
    """Validate and write results.json, report.md and both plots into ``directory`` (without
    matplotlib: no plots, a warning says so, and the returned paths name none)."""
    validate_results(results)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": directory / "results.json",
        "markdown": directory / "report.md",
        "latency_plot": directory / "latency_vs_batch.png",
        "accuracy_plot": directory / "accuracy_vs_throughput.png",
    }
    plots = has_matplotlib()
    write_json(paths["results"], results)
    atomic_write_text(paths["markdown"], render_markdown(results, plots=plots))
    if not plots:  # the measurements are worth keeping without their pictures
        log.warning(f"the report's plots were not drawn: matplotlib is not installed ({PLOTS_INSTALL})")
        del paths["latency_plot"], paths["accuracy_plot"]
        return paths
    plot_latency(results, paths["latency_plot"])
    plot_accuracy_vs_throughput(results, paths["accuracy_plot"])
    return paths
