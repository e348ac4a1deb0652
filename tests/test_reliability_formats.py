"""Every file format resnet-deploy reads back, fuzzed field by field, nested fields included.

Each test starts from a valid document of one format (the TensorRT engine sidecar, the export
manifest, the quantize artifact's manifest, qparams.json and program.pt2, a checkpoint, the model
registry, pipeline.json, results.json), changes one to three fields anywhere in it (a nested value
replaced by a value of the wrong type, an out-of-range number, NaN, a path leaving the folder, a NUL
byte, or the field deleted), writes it as another tool or an attacker would (hashes and digests made
to match, so that what is judged is the content), and hands it to the reader and then to the code that
uses what the reader returned. Whatever is drawn, the outcome must be the document accepted and used
without error, or a ``UserError`` (exit code 2) with a message; any other exception is a traceback
and fails the test.

The figures recorded (``reliability-figures.json``, see docs/reliability.md) are counted from what
each test observed: documents tried, accepted, refused, distinct refusal messages, and tracebacks
seen (written even when the test fails, so a failing run reports its count). Draws are derandomized
and the example counts small, so the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import re
import types
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_support import figures  # noqa: F401 - fixture
from resnet_deploy.errors import UserError

EXAMPLES = 80


def fuzz_settings(examples: int = EXAMPLES):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------------------------- mutations

# Values that break naive readers: wrong types, out-of-range and non-finite numbers, paths that leave the
# folder or that no file system accepts, empty and odd containers.
WRONG_VALUES = [
    None, True, False, 0, -1, 2**63, 10**30, 1.5, float("nan"), float("inf"), "", " ", "x", "8.6.1",
    "../../outside", "/etc/passwd", "a\u0000b", "0" * 64, [], {}, [1, "x"], {"x": 1}, [[]], [None],
]  # fmt: skip
DELETE = object()


def _paths(node, prefix=()):
    """Every path to a value of a nested JSON-like document (the root is ``()``)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _apply(document, path, value):
    """``document`` with the value at ``path`` replaced (or deleted); the root may be replaced too."""
    if not path:
        return document if value is DELETE else copy.deepcopy(value)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)
    return document


@st.composite
def edits(draw, document, values=WRONG_VALUES, max_edits: int = 3):
    """A copy of ``document`` with 1..max_edits values, at any depth, replaced or deleted; and the paths edited."""
    edited = copy.deepcopy(document)
    touched = []
    for _ in range(draw(st.integers(1, max_edits))):
        paths = list(_paths(edited))
        # The deeper fields are where today's readers were blind: draw them more often than the root.
        path = draw(st.sampled_from(paths[1:] if len(paths) > 1 and draw(st.integers(0, 9)) else paths))
        value = DELETE if path and draw(st.integers(0, 5)) == 0 else draw(st.sampled_from(values))
        edited = _apply(edited, path, value)
        touched.append(path)
        if not path:
            break
    return edited, touched


def _shape(message: str) -> str:
    """A refusal message with paths and numbers blanked: to count the distinct kinds of refusal."""
    return re.sub(r"(/\S+|\d+(\.\d+)?|'[^']*'|\"[^\"]*\")", "_", message.splitlines()[0])[:120]


class Tally:
    """What a fuzz test observed: documents tried, accepted, refused (with their distinct messages) and
    tracebacks. ``run`` counts before it re-raises, so the figures are those of the run, whatever it did."""

    def __init__(self) -> None:
        self.counts: Counter = Counter(tried=0, accepted=0, refused=0, tracebacks=0)
        self.messages: set[str] = set()
        self.first_traceback: str | None = None

    def run(self, work) -> None:
        self.counts["tried"] += 1
        try:
            work()
        except UserError as exc:
            message = str(exc)
            assert message.strip() and "Traceback" not in message, f"a refusal without a message: {exc!r}"
            self.counts["refused"] += 1
            self.messages.add(_shape(message))
        except Exception as exc:
            self.counts["tracebacks"] += 1
            self.first_traceback = self.first_traceback or f"{type(exc).__name__}: {exc}"
            raise
        else:
            self.counts["accepted"] += 1

    def figures(self) -> dict:
        data = {**self.counts, "distinct refusal messages": len(self.messages)}
        if self.first_traceback:
            data["first traceback"] = self.first_traceback[:300]
        return data


def fuzz(name: str, figures, strategy, check, examples: int = EXAMPLES) -> Tally:
    """Run ``check(drawn)`` on ``examples`` draws of ``strategy`` under a Tally; record its figures under
    ``name`` (in a ``finally``: a failing run records the tracebacks it saw); require none."""
    tally = Tally()

    @fuzz_settings(examples)
    @given(strategy)
    def property_(drawn):
        tally.run(lambda: check(drawn))

    try:
        property_()
    finally:
        figures(name, tally.figures())
    assert tally.counts["tracebacks"] == 0
    assert tally.counts["refused"] > 0 and tally.counts["accepted"] > 0, tally.counts  # both outcomes were reached
    return tally


def cli(*args: str) -> str:
    """``resnet-deploy -q ARGS`` in-process: its output on exit 0, a UserError (a refusal) on exit 2 with
    an ``error:`` line; any other ending (an exception, another exit code) is re-raised as a failure."""
    from click.testing import CliRunner

    from resnet_deploy.cli import main

    result = CliRunner().invoke(main, ["-q", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        errors = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
        assert errors, f"exit 2 without an error line:\n{result.output}"
        raise UserError(errors[-1])
    assert result.exit_code == 0, result.output
    return result.output


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, document) -> None:
    path.write_text(json.dumps(document))  # NaN and inf are written as JSON's NaN/Infinity, as Python does


# --------------------------------------------------------------------------------------------- engine sidecar


def _engine_folder(folder: Path) -> tuple[Path, dict]:
    """An engine, its source ONNX and a sidecar as ``build_engine`` writes it (the engine bytes are not
    a real engine: nothing here deserialises them, every check runs before that)."""
    folder.mkdir(parents=True, exist_ok=True)
    engine, onnx_file = folder / "model-fp32.sm86.engine", folder / "model-fp32.onnx"
    engine.write_bytes(b"\x01engine" * 16)
    onnx_file.write_bytes(b"\x02onnx" * 16)
    sidecar = {
        "format": "resnet-deploy/tensorrt-engine", "version": 1, "created": "2026-12-01T00:00:00+00:00",
        "flavour": "tensorrt-rtx", "tensorrt_version": "1.7.1.116", "precision": "fp32",
        "target": {"compute_capability": "8.6", "gpu_name": None, "current_gpu": False},
        "input_name": "input", "output_name": "logits",
        "shapes": {"input": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]}, "logits": [-1, 10]},
        "min_batch": 1, "opt_batch": 8, "max_batch": 16, "dynamic_batch": True,
        "engine": {"file": engine.name, "sha256": _sha256(engine.read_bytes()), "bytes": engine.stat().st_size},
        "onnx": {"file": onnx_file.name, "sha256": _sha256(onnx_file.read_bytes()), "scheme": None},
        "builder": {"strongly_typed": True, "workspace_mb": 64, "optimization_level": 0, "tf32": False, "timing_cache": None},
        "build_seconds": 0.4, "layer_precision": {"layers": 31, "convolutions": 19, "quantized_convolutions": 0},
        "layer_report": engine.name + ".layers.json",
    }  # fmt: skip
    return engine, sidecar


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT-RTX 1.7.1.116 'installed' and no GPU, so that check_engine runs every check up to the
    deserialisation (which needs a GPU) without TensorRT itself."""
    from resnet_deploy import tensorrt as trt_lib
    from resnet_deploy.tensorrt import runtime

    monkeypatch.setattr(runtime, "import_tensorrt", lambda: (types.SimpleNamespace(), "tensorrt-rtx", "1.7.1.116"))
    monkeypatch.setattr(runtime, "current_gpu", lambda: None)
    return trt_lib


def test_fuzz_engine_sidecar_nested_fields(tmp_path, fake_tensorrt, figures):
    """Sidecar fields at every depth (engine.sha256, target.compute_capability, onnx.file, shapes.input.max,
    ...): ``check_engine`` (what ``check-engine`` and the TensorRT runner call first) accepts the sidecar
    or refuses it naming the field; an accepted one is used the way the runner and the CLI use it."""
    engine, sidecar = _engine_folder(tmp_path / "trt")
    sidecar_file = fake_tensorrt.sidecar_path(engine)
    _write_json(sidecar_file, sidecar)
    assert fake_tensorrt.check_engine(engine) == sidecar  # the unedited sidecar passes

    def check(drawn):
        edited, _ = drawn
        _write_json(sidecar_file, edited)
        checked = fake_tensorrt.check_engine(engine)
        json.dumps(checked)  # check-engine prints it
        f"{checked['target'].get('compute_capability')} {checked['engine']['sha256'][:12]} {checked['precision']}"  # noqa: B018

    fuzz("fuzz_engine_sidecar", figures, edits(sidecar), check)


def test_sidecar_with_a_wrong_nested_field_names_it(tmp_path, fake_tensorrt):
    """Not only the top-level keys: a nested field of the wrong type is refused with its dotted name."""
    engine, sidecar = _engine_folder(tmp_path / "trt")
    for path, value, named in [
        (("engine", "sha256"), 12345, "engine.sha256"),
        (("engine",), "not an object", "engine"),
        (("target", "compute_capability"), ["8", "6"], "target.compute_capability"),
        (("onnx", "file"), None, "onnx.file"),
        (("shapes", "input", "max"), [16, 3, 32], "shapes.input"),
        (("max_batch",), 0, "min_batch/opt_batch/max_batch"),
        (("min_batch",), 0, "min_batch/opt_batch/max_batch"),  # in order (0 <= 8 <= 16), but no batch of 0
        (("shapes", "input", "min"), [1, 3, 32.5, 32], "shapes.input"),  # a size that is not an integer
        (("shapes", "input", "opt"), [0, 3, 32, 32], "shapes.input"),  # a batch of 0
        (("input_name",), 7, "input_name/output_name"),
    ]:
        _write_json(fake_tensorrt.sidecar_path(engine), _apply(copy.deepcopy(sidecar), path, value))
        with pytest.raises(UserError, match=re.escape(f"'{named}' is not")):
            fake_tensorrt.check_engine(engine)


def test_sidecar_of_a_newer_resnet_deploy_or_another_tensorrt_is_refused(tmp_path, fake_tensorrt):
    """A sidecar version this resnet-deploy does not know is refused as newer (its fields may mean
    something else); an engine of another TensorRT version is refused with a hint of what to do."""
    engine, sidecar = _engine_folder(tmp_path / "trt")
    _write_json(fake_tensorrt.sidecar_path(engine), {**sidecar, "version": 2})
    with pytest.raises(UserError, match="newer resnet-deploy"):
        fake_tensorrt.check_engine(engine)
    _write_json(fake_tensorrt.sidecar_path(engine), {**sidecar, "tensorrt_version": "1.6.1.120"})
    with pytest.raises(UserError, match="1.6.1.120") as refused:
        fake_tensorrt.check_engine(engine)
    assert refused.value.hint


def test_model_registry_with_a_bad_model_spec_names_the_field(tmp_path):
    """A hand-edited registry entry whose model spec has a class count out of range or a shortcut that
    is not a string is refused naming the field (not a KeyError, not a model built from it)."""
    from resnet_deploy import zoo

    spec = {"name": "resnet20", "num_classes": 10, "plain": False, "shortcut": "A"}
    entry = {"name": "tiny", "file": "checkpoints/tiny.pt", "sha256": "0" * 64, "bytes": 7, "model": spec,
             "dataset": {"name": "synthetic"}, "top1_full": {"top1": 50.0}, "epochs": 1}  # fmt: skip
    for field, value in [("num_classes", 1), ("num_classes", 2**31), ("shortcut", 5)]:
        registry = {"format": "resnet-deploy/zoo", "version": 1, "models": {"tiny": {**entry, "model": {**spec, field: value}}}}
        _write_json(tmp_path / "registry.json", registry)
        with pytest.raises(UserError, match=re.escape(f"'models.tiny.model.{field}' is")):
            zoo.read_registry(tmp_path)


# --------------------------------------------------------------------------------------------- export manifest


def _export_folder(folder: Path) -> dict:
    """An export folder (FP32 ONNX, int8 ONNX, an int8 engine and its sidecar) and its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("model-fp32.onnx", "model-int8-tensorrt.onnx", "model-int8-tensorrt.sm86.engine")}
    for index, path in enumerate(files.values()):
        path.write_bytes(bytes([index + 1]) * 100)
    (folder / "model-int8-tensorrt.sm86.engine.json").write_text("{}")
    digest = {name: _sha256(path.read_bytes()) for name, path in files.items()}
    parity = {"reference": "pytorch-fp32", "count": 64, "max_abs_diff": 3e-6, "top1_agreement": 100.0, "passed": True, "failures": []}
    return {
        "format": "resnet-deploy/export", "version": 1, "created": "2026-12-01T00:00:00+00:00",
        "checkpoint": {"path": str(folder / "model.pt"), "sha256": "1" * 64},
        "model": {"name": "resnet20", "num_classes": 10, "plain": False, "shortcut": "A"},
        "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "classes": [f"c{i}" for i in range(10)], "input_name": "input", "output_name": "logits",
        "quantization": {"artifact_dir": str(folder / "int8"), "target": "tensorrt", "checkpoint_sha256": "1" * 64},
        "artifacts": [
            {"kind": "onnx", "precision": "fp32", "scheme": None, "path": "model-fp32.onnx", "sha256": digest["model-fp32.onnx"],
             "dynamic_batch": True, "static_batch": None, "opset": 18, "parity": parity},
            {"kind": "onnx", "precision": "int8", "scheme": "tensorrt", "path": "model-int8-tensorrt.onnx",
             "sha256": digest["model-int8-tensorrt.onnx"], "dynamic_batch": True, "static_batch": None, "opset": 18, "parity": parity},
            {"kind": "tensorrt", "precision": "int8", "scheme": "tensorrt", "path": "model-int8-tensorrt.sm86.engine",
             "sidecar": "model-int8-tensorrt.sm86.engine.json", "sha256": digest["model-int8-tensorrt.sm86.engine"],
             "onnx": "model-int8-tensorrt.onnx", "min_batch": 1, "opt_batch": 64, "max_batch": 256, "compute_capability": "8.6",
             "flavour": "tensorrt-rtx", "tensorrt_version": "1.7.1.116", "build_seconds": 0.5},
        ],
        "skipped": [{"kind": "tensorrt", "precision": "fp16", "reason": "not asked for"}],
    }  # fmt: skip


def test_fuzz_export_manifest_nested_fields(tmp_path, monkeypatch, figures):
    """Manifest fields at every depth through ``load_manifest`` (hashes verified), then as bench, inspect
    and ``resnet-deploy build-engine`` use them: build-engine runs for real up to the builder, which is
    replaced by one that returns a sidecar (no TensorRT here), then rewrites the manifest and prints it."""
    from resnet_deploy.export import manifest as manifest_lib
    from resnet_deploy.export import run as export_run
    from resnet_deploy.inspect import debugger
    from resnet_deploy.inspect import lint
    from resnet_deploy.tensorrt import runtime

    folder = tmp_path / "exports" / "run"
    manifest = _export_folder(folder)
    _write_json(folder / "manifest.json", manifest)
    assert len(manifest_lib.load_manifest(folder)["artifacts"]) == 3
    _, sidecar = _engine_folder(tmp_path / "sidecar")

    def fake_build_engine(onnx_path, engine_path, *, precision, min_batch, opt_batch, max_batch, **_):
        return {**sidecar, "precision": precision, "min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}

    monkeypatch.setattr(runtime, "import_tensorrt", lambda: (types.SimpleNamespace(), "tensorrt-rtx", "1.7.1.116"))
    monkeypatch.setattr(runtime, "current_gpu", lambda: None)
    monkeypatch.setattr(export_run, "build_engine", fake_build_engine)
    monkeypatch.setattr(lint, "lint_before_engine_build", lambda path: {"int8": 19, "not_int8": []})
    quantized = types.SimpleNamespace(target="tensorrt", checkpoint_sha256="1" * 64)
    inspect_options = types.SimpleNamespace(export_dir=folder, int8_dir=folder / "int8")

    def check(drawn):
        edited, _ = drawn
        _write_json(folder / "manifest.json", edited)
        loaded = manifest_lib.load_manifest(folder, verify_hashes=True)
        for kind, precision in (("onnx", "fp32"), ("onnx", "int8"), ("tensorrt", "int8")):
            manifest_lib.find_artifact(loaded, kind, precision)
        [s.get("reason") for s in loaded.get("skipped", []) if s["kind"] == "tensorrt"]  # the pipeline's read
        loaded.get("checkpoint", {}).get("sha256")  # bench's read
        try:
            debugger._exported_onnx(inspect_options, quantized)  # inspect --export
        finally:
            cli("build-engine", str(folder), "--compute-capability", "8.6")  # reads, rebuilds, rewrites and prints the manifest

    fuzz("fuzz_export_manifest", figures, edits(manifest), check)


# --------------------------------------------------------------------------------------------- quantize artifact


def _program_zip(config: dict) -> bytes:
    """A stand-in for program.pt2: a zip with a weights config, as torch.export.save lays it out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("program/data/weights/model_weights_config.json", json.dumps(config))
        archive.writestr("program/data/weights/weight_0", b"\0" * 256)
        archive.writestr("program/models/model.json", json.dumps({"graph": "x" * 200}))
    return buffer.getvalue()


WEIGHTS_CONFIG = {"config": {"conv1.weight": {"path_name": "weight_0", "is_param": True, "use_pickle": False,
                                              "tensor_meta": {"dtype": 7, "sizes": [16, 3, 3, 3]}}}}  # fmt: skip


def _artifact_documents() -> dict:
    qparams = {"format": "resnet-deploy/quantized/qparams", "version": 1, "tensors": [
        {"name": "q0", "kind": "activation", "tensor": "x", "producer": "", "consumers": ["conv1"], "dtype": "int8",
         "granularity": "per-tensor", "scale": 0.02, "zero_point": 0, "axis": None, "quant_min": -128, "quant_max": 127},
        {"name": "dq1", "kind": "weight", "tensor": "w", "producer": "", "consumers": ["conv1"], "dtype": "int8",
         "granularity": "per-channel", "scale": [0.01, 0.02], "zero_point": [0, 0], "axis": 0, "quant_min": -127, "quant_max": 127},
    ]}  # fmt: skip
    manifest = {
        "format": "resnet-deploy/quantized", "version": 1,
        "checkpoint": {"path": "model.pt", "sha256": "2" * 64},
        "model": {"name": "resnet20", "num_classes": 10, "plain": False, "shortcut": "A"},
        "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "classes": [f"c{i}" for i in range(10)], "dataset": {"name": "synthetic"},
        "target": "tensorrt", "method": "minmax", "calib_size": 64, "keep_float": [], "qat": None,
        "metrics": {"int8": {"top1": 50.0}}, "versions": {"torch": "2.14.1"},
        "files": {"program": "program.pt2", "program_sha256": "", "qparams": "qparams.json", "qparams_sha256": ""},
    }  # fmt: skip
    return {"manifest": manifest, "qparams": qparams, "weights_config": WEIGHTS_CONFIG}


def _write_artifact(folder: Path, documents: dict, edited_paths=(), program_damage: tuple[float, int] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    program = bytearray(_program_zip(documents["weights_config"]))
    if program_damage:  # a flipped byte somewhere in the zip: a bad CRC, a broken header, or nothing
        where, bit = program_damage
        program[int(where * len(program))] ^= 1 << bit
    (folder / "program.pt2").write_bytes(bytes(program))
    _write_json(folder / "qparams.json", documents["qparams"])
    manifest = documents["manifest"]
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):  # as an attacker would: the hashes match the files, unless the edit was to them
        digests = {"program_sha256": _sha256(bytes(program)), "qparams_sha256": _sha256((folder / "qparams.json").read_bytes())}
        for key, digest in digests.items():
            if ("files", key) not in edited_paths:
                files[key] = digest
    _write_json(folder / "manifest.json", manifest)


@st.composite
def artifact_edits(draw):
    documents = _artifact_documents()
    which = draw(st.sampled_from(["manifest", "manifest", "qparams", "weights_config"]))
    documents[which], touched = draw(edits(documents[which]))
    damage = draw(st.none() | st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)))
    return documents, touched if which == "manifest" else [], damage


def test_fuzz_quantize_artifact_nested_fields(tmp_path, monkeypatch, figures):
    """manifest.json, qparams.json and program.pt2's weights config, at every depth, and byte flips in
    program.pt2 (hashes rewritten to match, as an attacker would): ``load_quantized`` loads the artifact
    or refuses it; an accepted one is used as ``quantize-info`` and ``export`` use it. The program
    itself is not deserialised (``torch.export.load`` is replaced): the pickle screen before it is."""
    from resnet_deploy.models import build_model
    from resnet_deploy.quantize import artifact as artifact_lib

    program = types.SimpleNamespace(module=lambda: (lambda x: x))
    monkeypatch.setattr(torch.export, "load", lambda path: program)
    folder = tmp_path / "int8"
    _write_artifact(folder, _artifact_documents())
    assert artifact_lib.load_quantized(folder).target == "tensorrt"

    def check(drawn):
        documents, edited_paths, damage = drawn
        _write_artifact(folder, documents, edited_paths, damage)
        quantized = artifact_lib.load_quantized(folder)
        info = {"model": quantized.spec.to_dict(), "classes": list(quantized.classes), "metrics": quantized.metrics,
                "qparams": artifact_lib.summarize_qparams(quantized.qparams), "method": quantized.method}  # quantize-info
        json.dumps(info)
        quantized.normalization.to_dict()
        with torch.device("meta"):
            build_model(quantized.spec)  # export rebuilds the spec it names

    fuzz("fuzz_quantize_artifact", figures, artifact_edits(), check, examples=EXAMPLES + 40)


# --------------------------------------------------------------------------------------------- checkpoint


def _checkpoint_payload() -> dict:
    from resnet_deploy.models import ModelSpec, build_model
    from resnet_deploy.train_config import TrainConfig

    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, False, "A")
    model = build_model(spec)
    return {
        "model": spec.to_dict(), "state_dict": model.state_dict(),
        "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
        "dataset": {"name": "synthetic", "classes": [f"class{i}" for i in range(10)], "train_size": 64, "test_size": 32},
        "epoch": 1, "step": 0, "train_config": TrainConfig(model="resnet8", epochs=2, batch_size=8).to_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, "scheduler": {"last_epoch": 8},
        "best_accuracy": 10.0, "history": [{"epoch": 1, "test_top1": 10.0}],
    }  # fmt: skip


# What a weight can be turned into: another dtype (complex, integer, half, double), NaN or inf, another
# layout (sparse), another shape; the half and double copies are accepted (they load as float32).
WRONG_TENSORS = [
    lambda t: t.to(torch.complex64), lambda t: t.to(torch.int64), lambda t: t.half(), lambda t: t.double(),
    lambda t: torch.full(t.shape, float("nan")), lambda t: torch.full(t.shape, float("inf")),
    lambda t: t.to_sparse() if t.dim() else t.reshape(1).to_sparse(), lambda t: t.reshape(-1), lambda t: torch.zeros(3),
]  # fmt: skip


@st.composite
def checkpoint_edits(draw, payload):
    """Edits of the plain fields (nested ones included) or of the state dict (a tensor replaced by a
    wrong one or by a plain value, a weight deleted or added)."""
    if draw(st.booleans()):
        plain = {k: v for k, v in payload.items() if k != "state_dict"}
        edited, _ = draw(edits(plain))
        if not isinstance(edited, dict):
            return edited
        return {**edited, "state_dict": payload["state_dict"]} if "state_dict" not in edited else edited
    state = dict(payload["state_dict"])
    key = draw(st.sampled_from(sorted(state)))
    action = draw(st.sampled_from(["tensor", "value", "delete", "add"]))
    if action == "tensor":
        state[key] = draw(st.sampled_from(WRONG_TENSORS))(state[key])
    elif action == "value":
        state[key] = draw(st.sampled_from(WRONG_VALUES))
    elif action == "delete":
        del state[key]
    else:
        state["extra.weight"] = torch.zeros(2)
    return {**payload, "state_dict": state}


def test_fuzz_checkpoint_fields(tmp_path, figures):
    """Checkpoint fields (the spec, normalization, dataset, the training state ``--resume`` reads, and
    the state dict's tensors) with the content digest recomputed, as another tool would write them:
    ``load_checkpoint`` builds the model or refuses the file; an accepted one is used the way eval and
    ``train --resume`` use it (class check, forward pass, the resumed configuration)."""
    from resnet_deploy.checkpoint import DIGEST_KEY, FORMAT, VERSION, check_dataset_matches, content_digest, load_checkpoint
    from resnet_deploy.train import _resumed_config
    from resnet_deploy.train_config import TrainConfig

    payload = _checkpoint_payload()
    path = tmp_path / "edited.pt"
    dataset = types.SimpleNamespace(name="synthetic", classes=[f"class{i}" for i in range(10)], num_classes=10,
                                    train_images=[0] * 64)  # fmt: skip

    def write(content) -> None:
        if isinstance(content, dict):
            content = {"format": FORMAT, "version": VERSION, **content}
            content.pop(DIGEST_KEY, None)
            content = {**content, DIGEST_KEY: content_digest(content)}
        torch.save(content, path)

    write(payload)
    assert load_checkpoint(path).spec.name == "resnet8"

    def check(edited):
        write(edited)
        loaded = load_checkpoint(path)
        check_dataset_matches(loaded, dataset.classes, dataset.name)
        assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, loaded.spec.num_classes)
        if all(key in loaded.raw for key in ("train_config", "optimizer", "scheduler", "epoch", "dataset")):
            _resumed_config(loaded.raw, TrainConfig(model="resnet8", epochs=2, batch_size=8), dataset, path).validate()

    fuzz("fuzz_checkpoint_fields", figures, checkpoint_edits(payload), check, examples=EXAMPLES + 40)


# --------------------------------------------------------------------------------------------- model registry


def test_fuzz_model_registry(tmp_path, monkeypatch, figures):
    """A zoo named by ``RESNET_DEPLOY_ZOO`` whose registry.json is edited at any depth: ``pretrained:NAME``
    resolves to a checked file inside the zoo or is refused, and ``models`` lists it or refuses."""
    from resnet_deploy import models as models_module
    from resnet_deploy import zoo

    (tmp_path / "zoo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "zoo" / "checkpoints" / "tiny.pt").write_bytes(b"weights")
    registry = {"format": "resnet-deploy/zoo", "version": 1, "models": {"tiny": {
        "name": "tiny", "file": "checkpoints/tiny.pt", "sha256": _sha256(b"weights"), "bytes": 7,
        "model": {"name": "resnet20", "num_classes": 10, "plain": False, "shortcut": "A"},
        "dataset": {"name": "synthetic"}, "top1_full": {"top1": 50.0, "correct": 5, "images": 10}, "epochs": 1}}}  # fmt: skip
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path / "zoo"))
    monkeypatch.setattr(models_module, "available_models", lambda: ["resnet20"])
    _write_json(tmp_path / "zoo" / "registry.json", registry)
    assert zoo.resolve("tiny") == tmp_path / "zoo" / "checkpoints" / "tiny.pt"

    def check(drawn):
        edited, _ = drawn
        _write_json(tmp_path / "zoo" / "registry.json", edited)
        try:
            resolved = zoo.resolve("tiny")
            assert (tmp_path / "zoo") in resolved.resolve().parents
        finally:
            cli("models", "--json")  # lists the shipped models beside the architectures

    fuzz("fuzz_model_registry", figures, edits(registry), check, examples=30)  # `models` builds a model each time


# --------------------------------------------------------------------------------------------- pipeline state, results


def test_fuzz_pipeline_state_and_results(tmp_path, figures):
    """pipeline.json edited at any depth costs a redo of the stages it no longer vouches for, never a
    traceback; a results.json read back for a current bench stage is used or refused."""
    from resnet_deploy import pipeline, pipeline_state
    from resnet_deploy.report import render_markdown

    output = tmp_path / "results.json"
    output.write_text("{}")
    state = {"format": pipeline_state.STATE_FORMAT, "version": 1, "stages": [
        {"name": "bench", "status": "done", "inputs_hash": "h", "outputs": {str(output): _sha256(b"{}")}, "seconds": 1.0, "reason": None},
        {"name": "train", "status": "failed", "inputs_hash": "t", "outputs": {}, "seconds": 2.0, "reason": "x"},
    ]}  # fmt: skip
    results_file = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu-2026-12-01" / "pipeline-r20" / "results.json"
    results = json.loads(results_file.read_text())
    state_file = tmp_path / "pipeline.json"

    @st.composite
    def drawn_documents(draw):
        if draw(st.booleans()):
            return "state", draw(edits(state))[0]
        return "results", draw(edits(results))[0]

    def check(drawn):
        which, edited = drawn
        if which == "state":
            _write_json(state_file, edited)
            loaded = pipeline_state.PipelineState(state_file, force=False)
            loaded.is_current("bench", "h"), loaded.is_current("train", "t"), loaded.previous_outputs("bench")
            loaded.interrupted_with_same_inputs("train", "t")
            if not loaded.previous:  # a state file no stage can be taken from reads as "redo everything"
                raise UserError("nothing reusable in the edited state")
        else:
            _write_json(output, edited)
            render_markdown(pipeline._read_previous_results(output))

    fuzz("fuzz_pipeline_state_and_results", figures, drawn_documents(), check)


# --------------------------------------------------------------------------------------------- environment variables


def test_environment_variables_are_refused_with_a_message(monkeypatch):
    """Values of resnet-deploy's own environment variables that cannot be meant: a message naming the
    variable (exit 2), never a traceback; blank values mean unset."""
    from resnet_deploy import data, distributed

    for value in ["abc", "-1", "0", "1e9", "ten"]:
        monkeypatch.setenv(data.MAX_ARCHIVE_BYTES_ENV, value)
        with pytest.raises(UserError, match=data.MAX_ARCHIVE_BYTES_ENV) as refused:
            data.max_archive_bytes()
        assert refused.value.hint  # an example of a value that works
    for value, expected in [("", data.MAX_ARCHIVE_BYTES), ("  ", data.MAX_ARCHIVE_BYTES), ("20000", 20000), ("1_000", 1000)]:
        monkeypatch.setenv(data.MAX_ARCHIVE_BYTES_ENV, value)
        assert data.max_archive_bytes() == expected
    for value in ["", "   "]:
        monkeypatch.setenv(data.CACHE_ENV, value)
        assert data.default_cache_dir() == Path.home() / ".cache" / "resnet-deploy"  # not the current folder
    for value in ["x", "1.5", str(10**15)]:
        monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
        with pytest.raises(UserError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_from_environment()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "60")
    assert distributed.timeout_from_environment().total_seconds() == 60
    for value in ["epoch=1", "signal=NOPE,epoch=1,step=2", "epoch=x,step=1", "rank=one,epoch=1,step=1", "=,=", "step=1"]:
        monkeypatch.setenv(distributed.FAULT_ENV, value)
        with pytest.raises(UserError, match=distributed.FAULT_ENV):
            distributed.fault_hook_from_environment(0, 0)


def test_bad_archive_limit_in_the_environment_is_a_message_not_an_import_crash(tmp_path):
    """The limit used to be parsed when resnet_deploy.data was imported: a bad value was a ValueError
    traceback from every command. A real process, since in-process the module is already imported."""
    from reliability_support import run_cli, valid_members, write_tar

    archive = write_tar(tmp_path / "data.tar.gz", valid_members(per_class=1))
    result = run_cli(["data", "--dataset", "imagefolder", "--data-dir", str(archive)], cwd=tmp_path,
                     env={"RESNET_DEPLOY_MAX_ARCHIVE_BYTES": "lots", "RESNET_DEPLOY_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "RESNET_DEPLOY_MAX_ARCHIVE_BYTES='lots' is not a positive" in result.stderr


# --------------------------------------------------------------------------------------------- device strings


@pytest.mark.parametrize("text", ["cuda:", "cuda:-1", "cpu:0", "CUDA", " cpu", "cuda:x", "cuda:1.5", "gpu", "", "cuda:\u0661", "meta"])
def test_almost_right_device_strings_are_refused(text):
    from resnet_deploy.backends import RunnerOptions, parse_device

    with pytest.raises(UserError, match="must be cpu, cuda or cuda:N"):
        parse_device(text)
    with pytest.raises(UserError, match="must be cpu, cuda or cuda:N"):
        RunnerOptions(device=text).validate()


def test_device_strings_that_are_right():
    from resnet_deploy.backends import parse_device

    assert [parse_device(t) for t in ("cpu", "cuda", "cuda:0", "cuda:3", "cuda:99")] == [
        ("cpu", 0), ("cuda:0", 0), ("cuda:0", 0), ("cuda:3", 3), ("cuda:99", 99)]  # fmt: skip


def test_fuzz_library_readers_on_a_checked_in_json(tmp_path):
    """Sanity of the harness itself: the mutation strategy reaches nested fields and deletions."""
    document = {"a": {"b": [1, {"c": 2}]}}
    assert ("a", "b", 1, "c") in set(_paths(document))
    assert _apply(copy.deepcopy(document), ("a", "b", 1, "c"), DELETE) == {"a": {"b": [1, {}]}}
    assert math.isnan(_apply(copy.deepcopy(document), ("a",), float("nan"))["a"])
