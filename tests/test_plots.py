"""The benchmark plots read right on every kind of run (issue #16): checked on the figures' own
objects (titles, text boxes from the renderer, axis limits), not on pixels.

The runs: the committed CPU pipeline run (many rows, a skipped TensorRT row on cuda:0), the same run
made GPU-like (an H200, two measured cuda:0 rows, one int8 row below the gate), a one-row run, and a
crowded one (six rows at the same top-1 and nearly the same throughput).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from resnet_deploy.plots import accuracy_figure, accuracy_limits, latency_figure, latency_title

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu-2026-12-01" / "pipeline-r20" / "results.json"


def cpu_run() -> dict:
    return json.loads(COMMITTED.read_text())


def gpu_run(copies: str = "included") -> dict:
    results = cpu_run()
    results["hardware"]["gpus"] = [{"name": "NVIDIA H200", "compute_capability": "9.0", "memory_gb": 139.8}]
    baseline = next(row for row in results["rows"] if row["name"] == "pytorch-fp32")
    for row in results["rows"]:
        if row["name"] in ("tensorrt", "pytorch-fp16"):
            speedup = 40 if row["name"] == "tensorrt" else 12
            row.update(status="ok", device="cuda:0", accuracy=dict(baseline["accuracy"], top1=87.40 if row["name"] == "tensorrt" else 87.96))
            row["latency"] = [dict(e, p50_ms=e["p50_ms"] / speedup, p90_ms=e["p90_ms"] / speedup, min_ms=e["min_ms"] / speedup,
                                   images_per_sec=e["images_per_sec"] * speedup, host_device_copies=copies) for e in baseline["latency"]]
    return results


def one_row_run() -> dict:
    results = cpu_run()
    results["rows"] = [row for row in results["rows"] if row["name"] == results["baseline"]]
    return results


def crowded_run() -> dict:
    """Six measured rows at one top-1, each 2 % faster than the one before: the labels' worst case."""
    results = cpu_run()
    measured = [row for row in results["rows"] if row["status"] == "ok"][:6]
    for index, row in enumerate(measured):
        row["accuracy"] = dict(row["accuracy"], top1=88.0)
        for entry in row["latency"]:
            entry["images_per_sec"] = 2000 * 1.02**index
    results["rows"] = measured
    return results


RUNS = {"cpu": cpu_run, "gpu": gpu_run, "one row": one_row_run, "crowded": crowded_run}


# ------------------------------------------------------------------------------------ latency title


def test_latency_title_names_the_copies_only_when_a_gpu_row_was_measured():
    cpu = latency_title(cpu_run())
    assert "AMD EPYC (2 cores)" in cpu and "host-device" not in cpu and "H200" not in cpu  # its TensorRT row was skipped
    gpu = latency_title(gpu_run())
    assert "NVIDIA H200 and AMD EPYC (2 cores)" in gpu and gpu.endswith("; host-device copies included")
    assert latency_title(gpu_run(copies="excluded")).endswith("; host-device copies excluded")
    only_gpu = gpu_run()
    only_gpu["rows"] = [row for row in only_gpu["rows"] if row["device"] != "cpu"]
    assert "AMD EPYC" not in latency_title(only_gpu)


def test_latency_figure_carries_the_title_and_every_measured_row():
    results = gpu_run()
    fig = latency_figure(results)
    assert fig._suptitle.get_text() == latency_title(results)
    legend_names = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend_names == [row["name"] for row in results["rows"] if row["status"] == "ok"]


# ------------------------------------------------------------------------------------ point labels


def _labels_markers_frame(fig):
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [text for text in ax.texts if text.get_text()]
    boxes = [text.get_window_extent(renderer) for text in labels]
    centres = [ax.transData.transform(offset) for collection in ax.collections for offset in collection.get_offsets()]
    return labels, boxes, centres, ax.get_window_extent(renderer)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_point_labels_overlap_nothing_and_stay_in_the_frame(run):
    results = RUNS[run]()
    labels, boxes, centres, frame = _labels_markers_frame(accuracy_figure(results))
    names = {row["name"] for row in results["rows"] if row["status"] == "ok" and row.get("accuracy")}
    assert {label.get_text() for label in labels} == names
    for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes), 2):
        assert not box_a.overlaps(box_b), f"{a.get_text()!r} prints over {b.get_text()!r}"
    for label, box in zip(labels, boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, label.get_text()
        assert not any(box.contains(x, y) for x, y in centres), f"{label.get_text()!r} covers a point"


def test_each_label_sits_beside_its_own_point():
    fig = accuracy_figure(cpu_run())
    labels, boxes, _, _ = _labels_markers_frame(fig)
    for label, box in zip(labels, boxes):
        x, y = fig.axes[0].transData.transform(label.xy)
        gap_x = max(box.x0 - x, x - box.x1, 0)
        gap_y = max(box.y0 - y, y - box.y1, 0)
        assert (gap_x**2 + gap_y**2) ** 0.5 < 60, f"{label.get_text()!r} is {gap_x:.0f}, {gap_y:.0f} px from its point"


# --------------------------------------------------------------------------------------- int8 gate


def _legend_texts(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_a_gate_far_below_the_points_is_named_not_drawn():
    fig = accuracy_figure(cpu_run())  # every int8 row within 0.2 points of FP32; the gate is 0.5 below
    ax = fig.axes[0]
    assert ax.get_ylim()[0] > 87.97 - 0.5
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == []
    assert any("87.47%" in text and "below this axis" in text for text in _legend_texts(fig))


def test_a_gate_near_the_points_is_drawn_on_the_axis():
    fig = accuracy_figure(gpu_run())  # its TensorRT int8 row sits below the gate
    ax = fig.axes[0]
    gate = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert gate == [pytest.approx(87.97 - 0.5, abs=0.01)]
    low, high = ax.get_ylim()
    assert low < 87.40 < gate[0] < high
    assert not any("below this axis" in text for text in _legend_texts(fig))


def test_no_gate_without_an_int8_point():
    fig = accuracy_figure(one_row_run())
    assert not any("gate" in text for text in _legend_texts(fig))
    assert [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"] == []


def test_accuracy_limits_decide_on_the_gate():
    assert accuracy_limits([88.0, 88.2], 87.5)[2] is False  # 0.5 below a 0.2 span: off the axis
    low, high, on_axis = accuracy_limits([88.0, 88.2], 87.9)
    assert on_axis and low < 87.9 and high > 88.2
    low, high, _ = accuracy_limits([88.0], None)
    assert low == pytest.approx(87.9) and high == pytest.approx(88.1)  # one point: a padded span, not zero


def test_one_point_gets_an_axis_around_it_not_a_decade():
    results = one_row_run()
    low, high = accuracy_figure(results).axes[0].get_xlim()
    x = max(results["rows"][0]["latency"], key=lambda e: e["batch_size"])["images_per_sec"]
    assert x / 1.3 < low < x < high < x * 1.3


def test_report_timing_line_names_the_copies_only_when_a_gpu_row_was_measured():
    """report.md's Timing line, like the plot's title: a CPU-only run says nothing of host-device copies."""
    from resnet_deploy.report import render_markdown

    def timing(results):
        return next(line for line in render_markdown(results).splitlines() if line.startswith("**Timing**"))

    assert "copies" not in timing(cpu_run())  # its skipped cuda:0 TensorRT row measured nothing
    assert "Host<->device copies on GPU rows: **excluded**" in timing(gpu_run("excluded"))
