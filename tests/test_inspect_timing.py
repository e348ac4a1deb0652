"""benchmarks/inspect_timing.py on tiny inputs: the shipped ResNet20 quantized (32 calibration images) on a 200-image CIFAR-10
folder of random pixels and inspected on 16 test images. What is checked is what the script reports
(one row per model, inspect's image and layer count, positive times, the load and competition
around the call), not how fast it ran."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from resnet_deploy import zoo

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inspect_timing.py"
RESNET20_LAYERS = 30  # input, conv1, 9 blocks x (conv1, conv2, add), fc: tests/test_inspect.py's RESNET20_LAYERS


def _script():
    spec = importlib.util.spec_from_file_location("inspect_timing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_inspect_timing_reports_a_row_per_model(tmp_path, monkeypatch):
    from test_data import write_cifar10

    monkeypatch.setenv("RESNET_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)  # the shipped ResNet20
    write_cifar10(tmp_path / "cifar10", per_batch=40)
    output = _script().main(["pretrained:resnet20", "--data-dir", str(tmp_path / "cifar10"), "--images", "16", "--calib-size", "32",
                             "--output-root", str(tmp_path / "results")])

    results = json.loads(output.read_text())
    assert results["benchmark"] == "inspect_timing" and results["environment"]["cpu_count"] >= 1
    [row] = results["rows"]
    assert row["model"] == "resnet20" and row["checkpoint"]["sha256"] == zoo.read_registry()["models"]["resnet20"]["sha256"]
    assert row["images"] == 16 and row["layers"] == RESNET20_LAYERS
    assert {"fp32", "pytorch-int8", "onnxruntime"} <= set(row["implementations_ran"]), row["implementations_ran"]
    assert row["inspect_wall_s"] > 0 and row["inspect_recorded_s"] > 0 and row["int8"]["quantize_s"] > 0
    assert row["inspect_recorded_s"] <= row["inspect_wall_s"] + 0.05  # inspect's own figure is part of the call
    assert row["load_average"]["before"] >= 0 and 0 <= row["cpu_competition"]["other_share"] <= 1
    assert "goal" not in row  # the goal is for inspect's default image count, not 16
    assert "| resnet20 | 16 | 30 |" in output.with_suffix(".md").read_text()
