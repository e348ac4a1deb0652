"""``pipeline.json``: the record of each stage of a pipeline run, and the rules that decide whether a
stage runs again (see ``pipeline``'s docstring): a stage is "current" when its inputs hash the same and
every output it wrote is still there unchanged; one that failed or was killed with the same inputs is
resumed by the stages that can resume (train, QAT).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .fileio import read_json, sha256_bytes, sha256_file, write_json
from .validation import is_text

log = logging.getLogger(__name__)

STATE_FORMAT = "resnet-deploy/pipeline"


@dataclass
class StageRecord:
    """One stage's outcome, as pipeline.json and the report's stage table hold it."""

    name: str
    status: str  # done | current | skipped | failed
    reason: str | None = None
    inputs_hash: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # path -> sha256
    seconds: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def hash_inputs(data: Any) -> str:
    """sha256 of a stage's inputs as canonical JSON (sorted keys)."""
    return sha256_bytes(json.dumps(data, sort_keys=True, default=str).encode())


class PipelineState:
    """pipeline.json: the records of the last run, keyed by stage name."""

    def __init__(self, path: Path, force: bool) -> None:
        self.path = path
        self.force = force
        self.previous: dict[str, dict] = {}
        if path.is_file() and not force:
            try:
                self.previous = _read_state(path)
            except UserError as exc:
                log.info(f"pipeline state {path} is unreadable ({exc}); redoing every stage")
        self.records: list[StageRecord] = []

    def is_current(self, name: str, inputs_hash: str) -> bool:
        """Same inputs as last time, and every output still there with the same content."""
        old = self.previous.get(name)
        if self.force or not old or old.get("status") not in ("done", "current") or old.get("inputs_hash") != inputs_hash:
            return False
        outputs = old.get("outputs") or {}
        return bool(outputs) and all(Path(p).is_file() and sha256_file(p) == digest for p, digest in outputs.items())

    def previous_outputs(self, name: str) -> dict[str, str]:
        return dict((self.previous.get(name) or {}).get("outputs") or {})

    def add(self, record: StageRecord) -> StageRecord:
        """Record (or replace) the stage's outcome and save at once, so a killed run leaves a trace."""
        self.records = [r for r in self.records if r.name != record.name] + [record]
        self.save()
        return record

    def interrupted_with_same_inputs(self, name: str, inputs_hash: str) -> bool:
        """The last run of ``name`` had these inputs and did not finish (failed or killed). Never with
        --force, which starts from no previous records: every stage starts over."""
        old = self.previous.get(name) or {}
        return old.get("inputs_hash") == inputs_hash and old.get("status") in ("running", "failed")

    def save(self) -> None:
        write_json(self.path, {"format": STATE_FORMAT, "version": 1, "stages": [r.to_dict() for r in self.records]})


def _read_state(path: Path) -> dict[str, dict]:
    """The stage records of pipeline.json, by name. Only records whose fields have the types used
    (name, status, inputs_hash, outputs: {file: sha256}) are kept: a damaged or hand-edited state file
    costs a redo of those stages, never a traceback."""
    data = read_json(path, "pipeline state")
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise UserError("not a resnet-deploy pipeline state")
    stages = data.get("stages", [])
    if not isinstance(stages, list):
        raise UserError("'stages' is not a list")
    previous = {}
    for stage in stages:
        if not (isinstance(stage, dict) and isinstance(stage.get("name"), str)):
            continue
        outputs = stage.get("outputs") or {}
        if not (isinstance(outputs, dict) and all(is_text(p) and isinstance(d, str) for p, d in outputs.items())):
            continue
        previous[stage["name"]] = stage
    return previous


def file_digests(*paths: Path) -> dict[str, str]:
    """{path: sha256} of the files that exist: what a stage wrote, as its record keeps it."""
    return {str(p): sha256_file(p) for p in paths if p.is_file()}


def run_stage(
    state: PipelineState, name: str, inputs: dict, work: Callable[[], list[Path]], keep_going_on: tuple[type, ...] = ()
) -> StageRecord:
    """Run ``work`` unless its inputs and outputs are current; record the outcome.

    An exception of a ``keep_going_on`` type (a failed check whose evidence was written) marks the stage
    failed and lets the pipeline go on to bench and report; anything else stops it.
    """
    inputs_hash = hash_inputs(inputs)
    if state.is_current(name, inputs_hash):
        log.info(f"[{name}] current (inputs unchanged, outputs verified): skipping; --force redoes it")
        return state.add(StageRecord(name, "current", "inputs and outputs unchanged since the last run", inputs_hash, state.previous_outputs(name)))
    log.info(f"[{name}] running")
    state.add(StageRecord(name, "running", None, inputs_hash))
    started = time.perf_counter()
    try:
        produced = work()
    except BaseException as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines()) or type(exc).__name__
        state.add(StageRecord(name, "failed", reason, inputs_hash, {}, round(time.perf_counter() - started, 1)))
        if isinstance(exc, keep_going_on):
            log.info(f"[{name}] failed: {reason}; continuing so the report shows it")
            return state.records[-1]
        raise
    record = StageRecord(name, "done", None, inputs_hash, file_digests(*produced), round(time.perf_counter() - started, 1))
    log.info(f"[{name}] done in {record.seconds:.0f} s")
    return state.add(record)


def skip_stage(state: PipelineState, name: str, reason: str) -> StageRecord:
    """Record a stage that does not run here, with the reason the report shows."""
    log.info(f"[{name}] skipped: {reason}")
    return state.add(StageRecord(name, "skipped", reason))
