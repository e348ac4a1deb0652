"""Optional packages (setup.cfg's extras): a missing one is named with the extra that installs it,
and a missing matplotlib costs the plots, not the measurements."""

from __future__ import annotations

import logging
import sys

import pytest

from resnet_deploy.errors import MissingDependencyError


def test_missing_onnxruntime_names_both_packages(monkeypatch, tmp_path):
    from resnet_deploy.export.parity import onnx_session

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when neither is installed
    with pytest.raises(MissingDependencyError) as info:
        onnx_session(tmp_path / "model.onnx")
    message = str(info.value)
    assert "checking an ONNX export against PyTorch needs ONNX Runtime" in message
    assert '"resnet-deploy[cpu]" (onnxruntime, CPU)' in message and '"resnet-deploy[gpu]" (onnxruntime-gpu' in message


def test_report_without_matplotlib_keeps_the_results_and_says_so(monkeypatch, tmp_path, caplog):
    from resnet_deploy import optional, report

    results = {
        "run_name": "x", "hardware": {"cpu_model": "cpu", "physical_cores": 2, "gpus": []},
        "software": {"torch": "2", "python": "3"}, "model": {"spec": {"name": "resnet20"}, "checkpoint": {"path": "c", "sha256": "s"}, "num_classes": 10},
        "dataset": {"name": "cifar10", "size": 10}, "settings": {"batch_sizes": [1]}, "baseline": "pytorch-fp32", "rows": [], "verification": None,
    }  # fmt: skip
    assert "## Plots" in report.render_markdown(results)  # with matplotlib, the report shows them
    monkeypatch.setattr(report, "validate_results", lambda results: None)  # a partial document, schema aside
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING, logger="resnet_deploy"):
        paths = report.write_report(results, tmp_path / "run")
    assert sorted(paths) == ["markdown", "results"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.md", "results.json"]
    assert "## Plots" not in paths["markdown"].read_text()  # no links to pictures that are not there
    assert [r.getMessage() for r in caplog.records] == [
        f"the report's plots were not drawn: matplotlib is not installed ({optional.PLOTS_INSTALL})"
    ]
    with pytest.raises(MissingDependencyError, match=r"resnet-deploy\[plots\]"):
        report.plot_latency(results, tmp_path / "run" / "latency.png")


def test_results_without_jsonschema_are_not_checked_and_it_says_so(monkeypatch, caplog):
    from resnet_deploy import optional, report

    monkeypatch.setitem(sys.modules, "jsonschema", None)  # what `import jsonschema` meets when it is not installed
    with caplog.at_level(logging.INFO, logger="resnet_deploy"):
        report.validate_results({"rows": "not a list"})  # would fail the schema
    assert [r.getMessage() for r in caplog.records] == [
        f"results not checked against the schema (results.schema.json): jsonschema is not installed ({optional.SCHEMA_INSTALL})"
    ]
