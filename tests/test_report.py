"""The results schema is a JSON file shipped with the package (resnet_deploy/schemas/), loaded as
report.RESULTS_SCHEMA: every committed results.json follows it, broken documents do not, and its
lists agree with the code that writes the results."""

from __future__ import annotations

import copy
import fnmatch
import json
from pathlib import Path

import jsonschema
import pytest

from resnet_deploy import report
from resnet_deploy.backends.base import BACKENDS, PRECISIONS
from resnet_deploy.bench import RESULTS_FORMAT, RESULTS_VERSION

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "resnet_deploy" / "schemas" / report.RESULTS_SCHEMA_FILE
COMMITTED = sorted((REPO / "benchmarks" / "results").rglob("results.json"))


def test_the_committed_runs_are_all_found():
    # Every one of these validated against the schema when it was a Python dict; a results.json
    # committed later is checked by the next test as well.
    found = {str(path.relative_to(REPO / "benchmarks" / "results")) for path in COMMITTED}
    assert {"cpu-2026-11-24/results.json", "cpu-2026-12-01/pipeline-r20/results.json",
            "cpu-2026-12-01/pipeline-r20-e100/results.json"} <= found  # fmt: skip


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: str(path.parent.relative_to(REPO / "benchmarks" / "results")))
def test_every_committed_results_file_follows_the_schema_file(path):
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(path.read_text()), schema)
    report.validate_results(json.loads(path.read_text()))  # the library's check: the same file, loaded once
    assert report.RESULTS_SCHEMA == schema


def _edited(edit) -> dict:
    results = json.loads((REPO / "benchmarks" / "results" / "cpu-2026-12-01" / "pipeline-r20" / "results.json").read_text())
    edit(results)
    return results


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.pop("verification"),  # a required top-level field
        lambda r: r["rows"][0].pop("status"),
        lambda r: r["rows"][0]["latency"][0].pop("p50_ms"),  # an ok entry without its figures
        lambda r: r["rows"][0].update(backend="tflite"),
        lambda r: r["rows"][0].update(precision="int4"),
        lambda r: r["rows"][1].update(reason=None),  # a skipped row must say why
        lambda r: r["rows"][0]["accuracy"].update(top1=101.0),
        lambda r: r.update(interrupted={"signal": 2, "signal_name": "SIGINT", "row": "x", "phase": "middle", "message": "m"}),
        lambda r: r["pipeline"]["stages"][0].update(status="maybe"),
        lambda r: r.update(rows=[]),
    ],
    ids=["no-verification", "row-without-status", "ok-latency-without-p50", "unknown-backend", "unknown-precision",
         "skipped-without-reason", "top1-over-100", "unknown-interrupted-phase", "unknown-stage-status", "no-rows"],
)  # fmt: skip
def test_the_schema_file_refuses_broken_results(edit):
    broken = _edited(edit)
    with pytest.raises(jsonschema.ValidationError):
        report.validate_results(broken)


def test_the_schema_lists_what_the_code_writes():
    row = report.RESULTS_SCHEMA["$defs"]["row"]["properties"]
    assert row["backend"]["enum"] == list(BACKENDS)
    assert row["precision"]["enum"] == list(PRECISIONS)
    assert report.RESULTS_SCHEMA["properties"]["format"] == {"const": RESULTS_FORMAT}
    assert report.RESULTS_SCHEMA["properties"]["version"] == {"const": RESULTS_VERSION}


def test_the_schema_file_ships_with_the_package_and_jsonschema_is_an_extra():
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(REPO / "setup.cfg")["options"]
    shipped = SCHEMA_FILE.relative_to(REPO / "resnet_deploy").as_posix()
    assert any(fnmatch.fnmatch(shipped, pattern) for pattern in options["package_data"]["resnet_deploy"])
    assert not any(r.startswith("jsonschema") for r in options["install_requires"])
    assert [r for r in options["extras_require"]["schema"] if r.startswith("jsonschema")]


def test_results_written_before_the_interrupted_field_still_validate():
    old = _edited(lambda r: r.pop("interrupted"))
    report.validate_results(copy.deepcopy(old))
