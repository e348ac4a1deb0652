"""The two plots of a benchmark results document (``report.write_report`` writes them beside report.md).

``latency_vs_batch.png``         p50 latency (whiskers min..p90) and throughput against batch size, per row
``accuracy_vs_throughput.png``   top-1 against images/s at the baseline's largest batch, a labelled point per row

They must read right on every kind of run (CPU only, GPU, one row, many rows), so what each figure says
is decided by small functions the tests check (tests/test_plots.py):

- the latency title names the hardware the measured rows ran on, and the host-device copies only when a
  GPU row was measured (a skipped TensorRT row on a CPU-only machine measured nothing);
- each point label goes to the nearest spot around its point that overlaps no other label, no marker and
  not the frame (``place_labels``);
- the int8 gate (FP32 top-1 minus the allowed drop) is shown only when an int8 point is plotted, and
  when it lies far below the points the axis stays on the points and the legend gives its value instead.

A row keeps its colour in both figures and its marker says its precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .fileio import atomic_path
from .optional import import_pyplot

MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
LEGEND_COLUMNS = 3
DPI = 120
DEFAULT_INT8_DROP = 0.5  # Thresholds().int8_max_top1_drop, for results written without --verify


def _pyplot():
    return import_pyplot("the benchmark report's plots")


def ok_entries(row: dict) -> dict[int, dict]:
    return {e["batch_size"]: e for e in row.get("latency", []) if e["status"] == "ok"}


def measured_rows(results: dict) -> list[dict]:
    """The rows with at least one latency figure: the only ones either plot draws."""
    return [row for row in results["rows"] if ok_entries(row)]


def row_colours(results: dict) -> dict[str, tuple]:
    """One colour per measured row, the same in both figures (tab20 past ten rows, so none repeats)."""
    names = [row["name"] for row in measured_rows(results)]
    colours = _pyplot().get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    return {name: colours[index % len(colours)] for index, name in enumerate(names)}


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    _pyplot().close(fig)


def _format_log_axis(axis, low: float, high: float) -> None:
    """Plain numbers on a log axis. Over a decade or more, labelling every minor tick prints 6 7 8 9 over
    each other, so only 2s and 5s keep theirs; within one decade the minor ticks may be the only ones."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _pos: f"{value:,.0f}" if value >= 100 else f"{value:g}")
    sparse = FuncFormatter(lambda value, _pos: plain(value) if value > 0 and f"{value:e}"[0] in "25" else "")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(sparse if low > 0 and high / low >= 10 else plain)


# ============================================================================================ latency


def gpu_copies_measured(results: dict) -> list[str]:
    """The host-device copy settings of the GPU entries that were measured ([] for a CPU-only run)."""
    entries = [entry for row in measured_rows(results) for entry in ok_entries(row).values()]
    return sorted({e["host_device_copies"] for e in entries if e.get("host_device_copies", "none (cpu)") != "none (cpu)"})


def latency_title(results: dict) -> str:
    """Model, the hardware its measured rows ran on, and the copies setting when a GPU row was measured."""
    entries = [entry for row in measured_rows(results) for entry in ok_entries(row).values()]
    gpu_copies = gpu_copies_measured(results)
    on_cpu = not entries or any(e.get("host_device_copies", "none (cpu)") == "none (cpu)" for e in entries)
    hw = results["hardware"]
    places = []
    if gpu_copies:
        places.append(", ".join(g["name"] for g in hw.get("gpus", [])) or "GPU")
    if on_cpu:
        places.append(f"{hw['cpu_model']} ({hw['physical_cores']} cores)")
    copies = f"; host-device copies {'/'.join(gpu_copies)}" if gpu_copies else ""
    return f"{results['run_name']}: {results['model']['spec'].get('name')} on {' and '.join(places)}{copies}"


def latency_figure(results: dict):
    """p50 latency (with min..p90 whiskers) and throughput against batch size, one line per row; the
    legend sits under both panels, where it covers no line however many rows there are."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows, colours = measured_rows(results), row_colours(results)
    legend_lines = -(-len(rows) // LEGEND_COLUMNS)
    fig, (ax_latency, ax_throughput) = _pyplot().subplots(1, 2, figsize=(12, 4.6 + 0.2 * legend_lines), dpi=DPI, layout="constrained")
    for row in rows:
        entries = sorted(ok_entries(row).values(), key=lambda e: e["batch_size"])
        sizes = [e["batch_size"] for e in entries]
        p50 = [e["p50_ms"] for e in entries]
        whiskers = [[max(0.0, e["p50_ms"] - e["min_ms"]) for e in entries], [max(0.0, e["p90_ms"] - e["p50_ms"]) for e in entries]]
        style = {"marker": MARKERS.get(row["precision"], "o"), "color": colours[row["name"]], "label": row["name"]}
        ax_latency.errorbar(sizes, p50, yerr=whiskers, capsize=3, **style)
        ax_throughput.plot(sizes, [e["images_per_sec"] for e in entries], **style)
    sizes = sorted({size for row in rows for size in ok_entries(row)} | set(results["settings"].get("batch_sizes", [])))
    for axis, label in ((ax_latency, "latency per batch, ms (p50; whiskers min..p90)"), (ax_throughput, "throughput, images/s")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        if sizes:
            axis.set_xticks(sizes)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        _format_log_axis(axis.yaxis, *axis.get_ylim())
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    if rows:
        handles, labels = ax_throughput.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(LEGEND_COLUMNS, len(rows)), fontsize=8)
    else:
        ax_latency.text(0.5, 0.5, "no latency measured", ha="center", transform=ax_latency.transAxes)
    fig.suptitle(latency_title(results), fontsize=10)
    return fig


def plot_latency(results: dict, path: str | os.PathLike) -> None:
    _save(latency_figure(results), path)


# =================================================================================== accuracy plot


@dataclass(frozen=True)
class Point:
    name: str
    label: str
    images_per_sec: float
    top1: float
    precision: str


def accuracy_points(results: dict) -> tuple[list[Point], int | None]:
    """Each measured row with an accuracy, at the largest batch the baseline measured (the row's largest
    up to it when it could not run that one, named in its label), and that batch size."""
    baseline = next((r for r in results["rows"] if r["name"] == results["baseline"]), None)
    reference = max(ok_entries(baseline)) if baseline and ok_entries(baseline) else None
    points = []
    for row in measured_rows(results):
        if not row.get("accuracy"):
            continue
        entries = ok_entries(row)
        size = max([b for b in entries if reference is None or b <= reference] or entries)
        label = row["name"] + ("" if size == reference else f" (bs {size})")
        points.append(Point(row["name"], label, entries[size]["images_per_sec"], row["accuracy"]["top1"], row["precision"]))
    return sorted(points, key=lambda p: (p.images_per_sec, p.top1)), reference


def int8_gate(results: dict, points: list[Point]) -> tuple[float, float, float] | None:
    """(FP32 top-1, allowed drop, gate) when an int8 point is plotted against a baseline with an accuracy."""
    baseline = next((r for r in results["rows"] if r["name"] == results["baseline"]), None)
    if not (baseline and baseline.get("accuracy")) or not any(p.precision == "int8" for p in points):
        return None
    drop = (results.get("verification") or {}).get("thresholds", {}).get("int8_max_top1_drop", DEFAULT_INT8_DROP)
    top1 = baseline["accuracy"]["top1"]
    return top1, drop, top1 - drop


def accuracy_limits(values: list[float], gate: float | None) -> tuple[float, float, bool]:
    """y-limits around the points (and the FP32 line), padded by 15 % (0.1 points at least), and whether
    the gate line is on the axis: only when it lies within half the points' span below them; further
    down it would squash every point into a strip at the top."""
    low, high = min(values), max(values)
    pad = max(0.15 * (high - low), 0.1)
    low, high = low - pad, high + pad
    if gate is not None and gate >= low - 0.5 * (high - low):
        return min(low, gate - pad), high, True
    return low, high, False


def throughput_limits(values: list[float]) -> tuple[float, float]:
    """x-limits a little beyond the points on the log axis (a single point gets +-15 %, not a decade)."""
    low, high = min(values), max(values)
    factor = max((high / low) ** 0.06, 1.15)
    return low / factor, high * factor


def _legend_in_rows(fig, rows: list[list]) -> None:
    """One legend under the axes with one line per group (matplotlib fills a legend column by column)."""
    from matplotlib.lines import Line2D

    rows = [row for row in rows if row]
    columns = max(len(row) for row in rows)
    blank = Line2D([], [], linestyle="", label=" ")
    handles = [row[column] if column < len(row) else blank for column in range(columns) for row in rows]
    fig.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=8)


def accuracy_figure(results: dict):
    """Top-1 against images/s, each point labelled beside it; the lines' and markers' legend sits under
    the axes, so nothing is drawn over the points."""
    from matplotlib.lines import Line2D

    points, reference = accuracy_points(results)
    colours = row_colours(results)
    fig, ax = _pyplot().subplots(figsize=(8, 5.6), dpi=DPI, layout="constrained")
    for point in points:
        ax.scatter([point.images_per_sec], [point.top1], marker=MARKERS.get(point.precision, "o"), s=60, color=colours[point.name], zorder=3)
    markers = [Line2D([], [], marker=MARKERS[p], color="black", linestyle="", label=p)
               for p in MARKERS if any(point.precision == p for point in points)]
    lines = []
    gate = int8_gate(results, points)
    if gate:
        top1, drop, threshold = gate
        low, high, gate_on_axis = accuracy_limits([p.top1 for p in points] + [top1], threshold)
        ax.axhline(top1, color="grey", linestyle="--", linewidth=1)
        lines.append(Line2D([], [], color="grey", linestyle="--", label=f"FP32 PyTorch top-1 {top1:.2f}%"))
        gate_label = f"int8 gate: top-1 >= {threshold:.2f}% (FP32 - {drop:g} pts)"
        if gate_on_axis:
            ax.axhline(threshold, color="red", linestyle=":", linewidth=1)
        else:
            gate_label += ", below this axis: every point is above it"
        lines.append(Line2D([], [], color="red", linestyle=":", label=gate_label))
    elif points:
        low, high, _ = accuracy_limits([p.top1 for p in points], None)
    if points:
        ax.set_ylim(low, high)
        ax.set_xscale("log")
        ax.set_xlim(*throughput_limits([p.images_per_sec for p in points]))
        _format_log_axis(ax.xaxis, *ax.get_xlim())
        _legend_in_rows(fig, [markers, lines])
    else:
        ax.text(0.5, 0.5, "no row with both accuracy and latency", ha="center", transform=ax.transAxes)
    ax.set_xlabel(f"throughput, images/s (batch {reference})" if reference else "throughput, images/s")
    ax.set_ylabel("top-1 accuracy, %")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{results['run_name']}: accuracy vs throughput", fontsize=10)
    # The labels are placed in display coordinates, so the layout is settled first and then frozen.
    fig.canvas.draw()
    fig.set_layout_engine("none")
    place_labels(ax, points)
    return fig


def plot_accuracy_vs_throughput(results: dict, path: str | os.PathLike) -> None:
    _save(accuracy_figure(results), path)


# ================================================================================== label placement

# (dx, dy) in points around a point, nearest first; a label's alignment makes it grow away from its point.
_RING = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
_STEP = 8  # points from the point's centre to the label, per ring
_LEADER_FROM_RING = 2  # labels this far out get a thin line to their point
_GAP = 2  # pixels kept free around a label


def _candidates():
    for ring in range(1, 7):
        for dx, dy in _RING:
            yield ring, dx * _STEP * ring, dy * _STEP * ring, {1: "left", -1: "right", 0: "center"}[dx], {1: "bottom", -1: "top", 0: "center"}[dy]


def _overlap(box, others) -> float:
    total = 0.0
    for other in others:
        width = min(box.x1, other.x1) - max(box.x0, other.x0)
        height = min(box.y1, other.y1) - max(box.y0, other.y0)
        if width > 0 and height > 0:
            total += width * height
    return total


def _outside(box, frame) -> float:
    inside_width = max(0.0, min(box.x1, frame.x1) - max(box.x0, frame.x0))
    inside_height = max(0.0, min(box.y1, frame.y1) - max(box.y0, frame.y0))
    return box.width * box.height - inside_width * inside_height


def place_labels(ax, points: list[Point]) -> list:
    """Label every point at the first spot of rings around it (nearest first) where the label overlaps
    no label placed before, no marker and not the frame; when no spot is free, the one overlapping
    least. Labels beyond the first ring get a thin leader line to their point. Returns the labels."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    radius = renderer.points_to_pixels(5)
    centres = [ax.transData.transform((p.images_per_sec, p.top1)) for p in points]
    obstacles = [Bbox.from_extents(x - radius, y - radius, x + radius, y + radius) for x, y in centres]
    frame = ax.get_window_extent(renderer)
    labels = []
    for point in points:
        best = None
        for ring, dx, dy, ha, va in _candidates():
            text = ax.annotate(point.label, (point.images_per_sec, point.top1), xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=8, zorder=4)
            box = text.get_window_extent(renderer).expanded(1, 1).padded(_GAP)
            cost = _overlap(box, obstacles) + 10 * _outside(box, frame)
            if best is not None and cost >= best[0]:
                text.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (cost, text, box, ring, dx, dy)
            if cost == 0:
                break
        _, text, box, ring, dx, dy = best
        obstacles.append(box)
        labels.append(text)
        if ring >= _LEADER_FROM_RING:
            ax.annotate("", (point.images_per_sec, point.top1), xytext=(dx, dy), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4})
    return labels
