"""``exports/<run-name>/manifest.json``: what an export directory holds, for every later stage.

Schema (version 1), documented for users in ``exports/README.md``::

    {"format": "resnet-deploy/export", "version": 1,
     "created": ISO time, "resnet_deploy_version": str,
     "checkpoint": {"path", "sha256"}, "model": spec dict, "normalization": {"mean", "std"},
     "classes": [...], "input_name": "input", "output_name": "logits",
     "quantization": null | {"artifact_dir", "target"},
     "artifacts": [
        {"kind": "onnx", "precision": "fp32"|"fp16"|"int8", "scheme": null|"tensorrt"|"cpu",
         "path", "sha256", "dynamic_batch", "static_batch", "opset", "simplifier", "export_seconds",
         "op_counts", "parity": {...}, int8 only: "qdq": {...}, "onnxruntime_kernels": {...}},
        {"kind": "tensorrt", "precision", "path", "sidecar", "sha256", "onnx", "min_batch", "opt_batch",
         "max_batch", "compute_capability", "flavour", "tensorrt_version", "build_seconds"}],
     "skipped": [{"kind", "precision", "reason"}]}

Paths inside the file are relative to the export directory, so the directory can be moved or copied
to the deployment machine as a whole.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from ..errors import UserError
from ..fileio import read_json, sha256_file, write_json
from ..validation import (
    Fields,
    is_compute_capability,
    is_dict_list,
    is_int,
    is_number,
    is_sha256,
    is_str_list,
    is_text,
    model_spec_problems,
    normalization_ok,
)

FORMAT = "resnet-deploy/export"
VERSION = 1
MANIFEST_NAME = "manifest.json"
ARTIFACT_KINDS = ("onnx", "tensorrt")
_PATH_KEYS = ("path", "sidecar", "onnx")
_REQUIRED = {
    "onnx": ("precision", "path", "sha256", "dynamic_batch", "opset"),
    "tensorrt": ("precision", "path", "sidecar", "sha256", "onnx", "min_batch", "opt_batch", "max_batch", "flavour",
                 "compute_capability", "build_seconds"),
}


def new_manifest(*, checkpoint_path: str | os.PathLike, checkpoint_sha256: str, spec: dict, normalization: dict,
                 classes: list[str], input_name: str, output_name: str) -> dict:
    from .. import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "resnet_deploy_version": __version__,
        "checkpoint": {"path": str(checkpoint_path), "sha256": checkpoint_sha256},
        "model": spec,
        "normalization": normalization,
        "classes": list(classes),
        "input_name": input_name,
        "output_name": output_name,
        "quantization": None,
        "artifacts": [],
        "skipped": [],
    }


def add_artifact(manifest: dict, entry: dict) -> None:
    """Add ``entry``, replacing an earlier one with the same path (a re-export of the same file)."""
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] != entry["path"]] + [entry]


def add_skipped(manifest: dict, kind: str, precision: str | None, reason: str) -> None:
    manifest.setdefault("skipped", []).append({"kind": kind, "precision": precision, "reason": reason})


def relative_to(export_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(export_dir).resolve())).as_posix()


def write_manifest(export_dir: str | os.PathLike, manifest: dict) -> Path:
    path = Path(export_dir) / MANIFEST_NAME
    write_json(path, manifest)
    return path


def load_manifest(export_dir: str | os.PathLike, verify_hashes: bool = True) -> dict:
    """Read and validate ``<export_dir>/manifest.json``.

    Returns the manifest with ``export_dir`` added (absolute) and every artifact's ``path``, ``sidecar``
    and ``onnx`` turned into absolute paths (strings). With ``verify_hashes`` each artifact's sha256 is
    recomputed: a missing or changed file is a UserError naming it, so nothing runs on a file that is
    not the one that was checked.
    """
    export_dir = Path(export_dir)
    if export_dir.name == MANIFEST_NAME and export_dir.is_file():  # the manifest itself was given
        export_dir = export_dir.parent
    manifest_path = export_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(f"no export manifest at {manifest_path}", hint="create one with: resnet-deploy export CHECKPOINT")
    manifest = read_json(manifest_path, "export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path} is not a resnet-deploy export manifest (no '{FORMAT}' format tag)")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise UserError(f"{manifest_path} has manifest version {manifest.get('version')!r}; this resnet-deploy reads <= {VERSION}")
    for key in ("checkpoint", "model", "normalization", "classes", "input_name", "output_name", "artifacts"):
        if key not in manifest:
            raise UserError(f"{manifest_path} lacks {key!r}")
    if not isinstance(manifest["artifacts"], list) or not all(isinstance(a, dict) for a in manifest["artifacts"]):
        raise UserError(f"{manifest_path} is malformed: 'artifacts' is not a list of objects")
    root = export_dir.resolve()
    for index, artifact in enumerate(manifest["artifacts"]):
        kind = artifact.get("kind")
        if not isinstance(kind, str) or kind not in ARTIFACT_KINDS:
            raise UserError(f"{manifest_path}: artifact {index} has unknown kind {kind!r}")
        missing = [key for key in _REQUIRED[kind] if key not in artifact]
        if missing:
            raise UserError(f"{manifest_path}: {kind} artifact {index} lacks {', '.join(missing)}")
    validate_manifest_fields(manifest, manifest_path)
    manifest["export_dir"] = str(root)
    for index, artifact in enumerate(manifest["artifacts"]):
        kind = artifact["kind"]
        for key in _PATH_KEYS:
            if artifact.get(key):
                resolved = (root / artifact[key]).resolve()
                if root not in resolved.parents:
                    raise UserError(f"{manifest_path}: artifact path {artifact[key]!r} points outside the export directory")
                artifact[key] = str(resolved)
        if verify_hashes:
            path = Path(artifact["path"])
            if not path.is_file():
                raise UserError(f"{manifest_path}: {kind} {artifact['precision']} artifact {path} is missing")
            digest = sha256_file(path)
            if digest != artifact["sha256"]:
                raise UserError(
                    f"{path} changed since export (sha256 {digest[:12]}..., manifest says {artifact['sha256'][:12]}...)",
                    hint="export again; never edit exported files in place",
                )
    return manifest


def validate_manifest_fields(manifest: dict, manifest_path: Path) -> None:
    """Every field later stages read, checked for type and range (artifacts already known to be objects
    of a known kind with their required keys): a damaged or hand-edited manifest is refused naming
    the fields, instead of failing later in bench, build-engine or inspect with a traceback."""
    from .onnx_export import INT8_SCHEMES, PRECISIONS

    fields = Fields(f"export manifest {manifest_path}", hint="export again; never edit exported files in place")
    checkpoint = fields.dict(manifest, "checkpoint")
    if checkpoint:
        fields.check(is_text(checkpoint.get("path")), "checkpoint.path", "a path")
        fields.check(is_sha256(checkpoint.get("sha256")), "checkpoint.sha256", "a sha256 hex digest")
    fields.add(model_spec_problems(manifest["model"]))
    fields.check(normalization_ok(manifest["normalization"]), "normalization", "{mean: 3 numbers, std: 3 positive numbers}")
    fields.check(is_str_list(manifest["classes"]), "classes", "a list of class names")
    for key in ("input_name", "output_name"):
        fields.check(is_text(manifest[key]), key, "a tensor name")
    quantization = manifest.get("quantization")
    if fields.check(quantization is None or isinstance(quantization, dict), "quantization", "null or an object") and quantization:
        if "checkpoint_sha256" in quantization:
            fields.check(is_sha256(quantization["checkpoint_sha256"]), "quantization.checkpoint_sha256", "a sha256 hex digest")
    skipped = manifest.get("skipped", [])
    fields.check(is_dict_list(skipped) and all(isinstance(s.get("kind"), str) and isinstance(s.get("reason"), str) for s in skipped),
                 "skipped", "a list of {kind, precision, reason}")
    for index, artifact in enumerate(manifest["artifacts"]):
        where = f"artifacts[{index}]"
        precision, scheme = artifact["precision"], artifact.get("scheme")
        fields.check(isinstance(precision, str) and precision in PRECISIONS, f"{where}.precision", f"one of {', '.join(PRECISIONS)}")
        fields.check(isinstance(scheme, (str, type(None))) and scheme in (None, "", *INT8_SCHEMES),
                     f"{where}.scheme", f"null or one of {', '.join(INT8_SCHEMES)}")
        for key in _PATH_KEYS:
            if key in _REQUIRED[artifact["kind"]] or artifact.get(key) is not None:
                fields.check(is_text(artifact.get(key)), f"{where}.{key}", "a path")
        fields.check(is_sha256(artifact["sha256"]), f"{where}.sha256", "a sha256 hex digest")
        if artifact["kind"] == "onnx":
            fields.check(isinstance(artifact["dynamic_batch"], bool), f"{where}.dynamic_batch", "true or false")
            fields.check(is_int(artifact["opset"], 1), f"{where}.opset", "an opset number")
            if artifact.get("static_batch") is not None:
                fields.check(is_int(artifact["static_batch"], 1), f"{where}.static_batch", "null or a batch size")
            if "parity" in artifact:  # absent only in manifests written by hand; build-engine requires it
                parity = artifact["parity"]
                fields.check(
                    isinstance(parity, dict) and isinstance(parity.get("passed"), bool) and is_int(parity.get("count"), 0)
                    and all(_is_real(parity.get(key)) for key in ("max_abs_diff", "top1_agreement")),
                    f"{where}.parity", "a parity record (passed, count, max_abs_diff, top1_agreement)",
                )
        else:
            batches = [artifact[key] for key in ("min_batch", "opt_batch", "max_batch")]
            if fields.check(all(is_int(b, 1) for b in batches), f"{where}.min_batch/opt_batch/max_batch", "batch sizes"):
                fields.check(batches[0] <= batches[1] <= batches[2], f"{where}.min_batch/opt_batch/max_batch", "in order min <= opt <= max")
            fields.check(isinstance(artifact["flavour"], str), f"{where}.flavour", "a TensorRT flavour")
            fields.check(is_compute_capability(artifact["compute_capability"]), f"{where}.compute_capability", "a compute capability such as 8.6")
            fields.check(is_number(artifact["build_seconds"]), f"{where}.build_seconds", "a number")
    fields.raise_if_any()


def _is_real(value) -> bool:
    """A number, NaN included: a parity check of a model that produced NaN logits records NaN (and fails)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def find_artifact(manifest: dict, kind: str, precision: str, scheme: str | None = None) -> dict | None:
    """The first artifact of that kind and precision (and int8 scheme, when given)."""
    for artifact in manifest["artifacts"]:
        if artifact["kind"] == kind and artifact["precision"] == precision:
            if scheme is None or artifact.get("scheme") in (None, scheme):
                return artifact
    return None
