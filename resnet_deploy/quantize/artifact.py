"""The quantized-model artifact: what ``quantize`` writes and ``export``/``bench`` read.

Layout of ``calibration/<run-name>/``:

``manifest.json``  format tag ``resnet-deploy/quantized``, version, the FP32 checkpoint's path and
                   sha256, model spec, normalization, classes, target, method, calibration size,
                   layers kept in float, residual_conv_input, metrics (FP32 and int8 top-1 ...), torch/torchao versions,
                   and the sha256 of ``program.pt2``. Written last: a directory without it is not an
                   artifact (an interrupted run).
``program.pt2``    the converted model (Q/DQ reference form) saved with ``torch.export.save``,
                   dynamic batch dimension.
``qparams.json``   every quantization point: activations (per-tensor scale and zero-point of each
                   quantize node) and weights (per-channel scales, zero-points, axis 0).

Loading checks the program's hash against the manifest *before* deserialising it, and the FP32
checkpoint's hash against the one recorded when a checkpoint is given: a stale or tampered pairing is
refused with a UserError (exit code 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import Normalization
from ..errors import MissingDependencyError, UserError
from ..fileio import atomic_path, read_json, sha256_file, write_json
from ..models import ModelSpec
from ..optional import TORCHAO
from ..validation import Fields, is_dict_list, is_file_name, is_int, is_number, is_sha256, is_str_list, model_spec_problems, normalization_ok
from .quantizer import layer_name

FORMAT = "resnet-deploy/quantized"
VERSION = 1
MANIFEST = "manifest.json"
PROGRAM = "program.pt2"
QPARAMS = "qparams.json"


def register_quant_ops(*, required: bool = False) -> None:
    """Register the ``quantized_decomposed`` ops a converted program calls (torchao's PT2E registers
    them on import); a saved program cannot be deserialised before that. The one place every stage
    does it: quantizing needs torchao itself (``required``: missing, it raises the install message);
    loading, exporting and rewriting a converted program need only the ops, which torch still defines
    when torchao is missing."""
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (imports pt2e.utils, which registers)
    except ImportError as exc:
        if required:
            raise MissingDependencyError(TORCHAO, f"pip install '{TORCHAO}'", "int8 quantization") from exc
        import torch.ao.quantization.fx._decomposed  # noqa: F401


def quant_ops() -> dict:
    """Quantize/dequantize ops of the PT2E reference representation, by kind."""
    register_quant_ops()
    ops = torch.ops.quantized_decomposed
    return {
        "quantize_per_tensor": {ops.quantize_per_tensor.default, ops.quantize_per_tensor.tensor},
        "dequantize_per_tensor": {ops.dequantize_per_tensor.default, ops.dequantize_per_tensor.tensor},
        "quantize_per_channel": {ops.quantize_per_channel.default},
        "dequantize_per_channel": {ops.dequantize_per_channel.default},
    }


def node_value(graph_module: torch.nn.Module, arg: Any) -> Any:
    """The tensor a ``get_attr`` node names in ``graph_module`` (a scale, a zero-point); any other argument as it is."""
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        value = graph_module
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value
    return arg


def _as_list(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist() if value.numel() != 1 else value.detach().cpu().reshape(()).item()
    return value


def extract_qparams(graph_module: torch.fx.GraphModule) -> list[dict]:
    """One record per quantization point of a converted PT2E model (graph order).

    Activations: each ``quantize_per_tensor`` node (its tensor, consumers, scale, zero-point).
    Weights: each ``dequantize_per_channel`` of a folded int8 weight (the quantize op was folded into
    the int8 constant), with the layer it feeds.
    """
    ops = quant_ops()
    records = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in ops["quantize_per_tensor"]:
            source, scale, zero_point, qmin, qmax, dtype = node.args[:6]
            consumers = sorted({layer_name(dq_user) or dq_user.name for dq in node.users for dq_user in dq.users})
            records.append(
                {
                    "name": node.name,
                    "kind": "activation",
                    "tensor": source.name if isinstance(source, torch.fx.Node) else str(source),
                    "producer": layer_name(source) if isinstance(source, torch.fx.Node) else "",
                    "consumers": consumers,
                    "dtype": str(dtype).removeprefix("torch."),
                    "granularity": "per-tensor",
                    "scale": float(_as_list(node_value(graph_module, scale))),
                    "zero_point": int(_as_list(node_value(graph_module, zero_point))),
                    "axis": None,
                    "quant_min": int(qmin),
                    "quant_max": int(qmax),
                }
            )
        elif node.target in ops["dequantize_per_channel"] or node.target in ops["quantize_per_channel"]:
            weight, scales, zero_points, axis, qmin, qmax, dtype = node.args[:7]
            if node.target in ops["quantize_per_channel"] and any(u.target in ops["dequantize_per_channel"] for u in node.users):
                continue  # unfolded weight quantize: recorded at its dequantize
            users = [u for u in node.users]
            records.append(
                {
                    "name": node.name,
                    "kind": "weight",
                    "tensor": str(weight.target) if isinstance(weight, torch.fx.Node) else str(weight),
                    "producer": "",
                    "consumers": sorted({layer_name(u) or u.name for u in users}),
                    "dtype": str(dtype).removeprefix("torch."),
                    "granularity": "per-channel",
                    "scale": [float(v) for v in node_value(graph_module, scales).reshape(-1).tolist()],
                    "zero_point": [int(v) for v in node_value(graph_module, zero_points).reshape(-1).tolist()],
                    "axis": int(axis),
                    "quant_min": int(qmin),
                    "quant_max": int(qmax),
                }
            )
    return records


def save_artifact(output_dir: str | os.PathLike, program: torch.export.ExportedProgram, qparams: list[dict], manifest: dict) -> Path:
    """Write program.pt2, qparams.json, then manifest.json (atomically each, manifest last)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    existing = output_dir / MANIFEST
    if existing.exists():
        existing.unlink()  # the old manifest must never vouch for a new, half-written program
    with atomic_path(output_dir / PROGRAM) as tmp:
        with open(tmp, "wb") as handle:
            torch.export.save(program, handle)
    write_json(output_dir / QPARAMS, {"format": FORMAT + "/qparams", "version": VERSION, "tensors": qparams})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **manifest,
        "files": {
            "program": PROGRAM,
            "program_sha256": sha256_file(output_dir / PROGRAM),
            "qparams": QPARAMS,
            "qparams_sha256": sha256_file(output_dir / QPARAMS),
        },
    }
    write_json(output_dir / MANIFEST, manifest)
    return output_dir


@dataclass
class QuantizedModel:
    """A loaded int8 artifact.

    ``module`` is the converted PT2E model in Q/DQ reference form: callable on normalized float32
    NCHW CPU input, exportable with ``torch.onnx.export(module, (x,), dynamo=True,
    dynamic_shapes=...)``. ``int8_cpu_callable()`` gives a fast CPU int8 version of it.
    """

    module: torch.nn.Module
    target: str
    spec: ModelSpec
    normalization: Normalization
    classes: list[str]
    checkpoint_sha256: str
    artifact_dir: Path
    metrics: dict
    manifest: dict = field(default_factory=dict)
    qparams: list[dict] = field(default_factory=list)
    _cpu_callable: Callable | None = field(default=None, repr=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @property
    def method(self) -> str:
        return self.manifest.get("method", "")

    @property
    def residual_conv_input(self) -> str:
        """How each residual Add reads its convolution-side input (see ``quantizer.annotate_graph``);
        manifests written before the option existed hold "int8" models."""
        return residual_conv_input_of(self.manifest)

    def int8_cpu_callable(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A CPU callable that runs real int8 kernels (see :mod:`.cpu_int8`); built once, then reused."""
        if self._cpu_callable is None:
            from .cpu_int8 import lower_for_cpu

            self._cpu_callable = lower_for_cpu(self.module, self.target)
        return self._cpu_callable


def residual_conv_input_of(manifest: dict) -> str:
    from ..quantize_choices import DEFAULT_RESIDUAL_CONV_INPUT

    return manifest.get("residual_conv_input", DEFAULT_RESIDUAL_CONV_INPUT)


def read_manifest(artifact_dir: str | os.PathLike) -> dict:
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise UserError(f"quantized artifact not found: {artifact_dir} is not a directory")
    path = artifact_dir / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{artifact_dir} is not a quantized artifact: it has no {MANIFEST}",
            hint="create one with: resnet-deploy quantize CHECKPOINT",
        )
    manifest = read_json(path, "artifact manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnet-deploy quantized-model manifest (no '{FORMAT}' format tag)")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise UserError(f"{path} was written by a newer resnet-deploy (format version {manifest.get('version')})")
    for key in ("checkpoint", "model", "normalization", "target", "files"):
        if key not in manifest:
            raise UserError(f"{path} is corrupt: it lacks {key!r}")
    _validate_manifest(manifest, path)
    return manifest


def _validate_manifest(manifest: dict, path: Path) -> None:
    """The fields loading and later stages read, checked for type, so a damaged or hand-edited manifest
    is refused naming the field instead of failing later with a traceback. The file names in ``files``
    must stay inside the artifact folder: the manifest must not make us hash or load other files."""
    from ..quantize_choices import RESIDUAL_CONV_INPUTS, TARGETS

    fields = Fields(f"artifact manifest {path}", hint="re-create the artifact with resnet-deploy quantize")
    checkpoint = fields.dict(manifest, "checkpoint")
    if checkpoint:
        fields.check(is_sha256(checkpoint.get("sha256")), "checkpoint.sha256", "a sha256 hex digest")
        fields.check(isinstance(checkpoint.get("path", ""), str), "checkpoint.path", "a string")
    fields.add(model_spec_problems(manifest["model"]))
    fields.check(normalization_ok(manifest["normalization"]), "normalization", "{mean: 3 numbers, std: 3 positive numbers}")
    fields.check(manifest["target"] in TARGETS if isinstance(manifest["target"], str) else False, "target", f"one of {', '.join(TARGETS)}")
    fields.check(is_str_list(manifest.get("classes", [])), "classes", "a list of class names")
    fields.check(residual_conv_input_of(manifest) in RESIDUAL_CONV_INPUTS, "residual_conv_input", f"one of {', '.join(RESIDUAL_CONV_INPUTS)}")
    for key in ("metrics", "versions", "dataset"):
        fields.check(isinstance(manifest.get(key, {}), dict), key, "an object")
    fields.check(manifest.get("qat") is None or isinstance(manifest["qat"], dict), "qat", "null or an object")
    files = fields.dict(manifest, "files")
    for name_key, default, digest_key in (("program", PROGRAM, "program_sha256"), ("qparams", QPARAMS, "qparams_sha256")):
        if files:
            fields.check(is_file_name(files.get(name_key, default)), f"files.{name_key}", "a file name inside the artifact folder")
            fields.check(is_sha256(files.get(digest_key)), f"files.{digest_key}", "a sha256 hex digest")
    fields.raise_if_any()


def _validate_qparams(document: Any, path: Path) -> list[dict]:
    """qparams.json: ``{"tensors": [records]}``, each record of :func:`extract_qparams`'s shape."""
    fields = Fields(f"qparams {path}", hint="re-create the artifact with resnet-deploy quantize")
    if not isinstance(document, dict):
        fields.check(False, "qparams", "an object with a 'tensors' list")
        fields.raise_if_any()
    records = document.get("tensors", [])
    if not fields.check(is_dict_list(records), "tensors", "a list of quantization records"):
        fields.raise_if_any()
    for index, record in enumerate(records):
        where = f"tensors[{index}]"
        kind = record.get("kind")
        fields.check(kind in ("activation", "weight"), f"{where}.kind", "activation or weight")
        fields.check(isinstance(record.get("dtype"), str), f"{where}.dtype", "a dtype name")
        if kind == "weight":
            fields.check(isinstance(record.get("scale"), list) and all(is_number(v) for v in record["scale"]), f"{where}.scale", "a list of numbers")
            fields.check(isinstance(record.get("zero_point"), list) and all(is_int(v) for v in record["zero_point"]), f"{where}.zero_point", "a list of integers")
        else:
            fields.check(is_number(record.get("scale")), f"{where}.scale", "a number")
            fields.check(is_int(record.get("zero_point")), f"{where}.zero_point", "an integer")
        if len(fields.problems) >= 6:
            break
    fields.raise_if_any()
    return records


def load_quantized(artifact_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> "QuantizedModel":
    """Load an artifact written by ``quantize``.

    With ``checkpoint``, its sha256 must equal the one recorded at quantization time (the int8 model
    was made from exactly that FP32 model). Any missing, altered or unreadable file is a UserError.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)  # validated: every field read below has its type
    recorded = manifest["checkpoint"]["sha256"]
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserError(f"checkpoint not found: {checkpoint}")
        actual = sha256_file(checkpoint)
        if actual != recorded:
            raise UserError(
                f"{artifact_dir} was calibrated from a different checkpoint than {checkpoint} "
                f"(recorded sha256 {recorded[:12]}..., this file {actual[:12]}...)",
                hint=f"re-run: resnet-deploy quantize {checkpoint}",
            )
    files = manifest["files"]
    program_path = artifact_dir / files.get("program", PROGRAM)
    qparams_path = artifact_dir / files.get("qparams", QPARAMS)
    for path, key in ((program_path, "program_sha256"), (qparams_path, "qparams_sha256")):
        if not path.is_file():
            raise UserError(f"{artifact_dir} is incomplete: {path.name} is missing")
        if sha256_file(path) != files.get(key):
            raise UserError(
                f"{path} is corrupt or was modified: its sha256 does not match {MANIFEST}",
                hint="re-create the artifact with resnet-deploy quantize",
            )
    refuse_pickled_program_entries(program_path)
    register_quant_ops()
    try:
        program = torch.export.load(str(program_path))
    except Exception as exc:  # a hash-verified file that still fails: a torch version that cannot read it
        raise UserError(
            f"{program_path} could not be loaded by torch {torch.__version__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint=f"it was written by torch {manifest.get('versions', {}).get('torch', '?')}; re-run quantize with this torch",
        ) from exc
    qparams = _validate_qparams(read_json(qparams_path, "qparams"), qparams_path)
    return QuantizedModel(
        module=program.module(),
        target=manifest["target"],
        spec=ModelSpec.from_dict(manifest["model"]),
        normalization=Normalization.from_dict(manifest["normalization"]),
        classes=list(manifest.get("classes", [])),
        checkpoint_sha256=recorded,
        artifact_dir=artifact_dir,
        metrics=dict(manifest.get("metrics", {})),
        manifest=manifest,
        qparams=qparams,
    )


def summarize_qparams(qparams: list[dict]) -> dict:
    """Counts a user can check at a glance: quantization points by kind and dtype, zero-points used."""
    summary: dict[str, Any] = {"activations": 0, "weights": 0, "dtypes": {}, "nonzero_zero_points": 0}
    for record in qparams:
        summary["activations" if record["kind"] == "activation" else "weights"] += 1
        summary["dtypes"][record["dtype"]] = summary["dtypes"].get(record["dtype"], 0) + 1
        zero_points = record["zero_point"] if isinstance(record["zero_point"], list) else [record["zero_point"]]
        summary["nonzero_zero_points"] += sum(1 for z in zero_points if z != 0)
    return summary

def refuse_pickled_program_entries(program_path: Path) -> None:
    """Refuse a ``.pt2`` program that could run code when ``torch.export.load`` reads it.

    ``torch.export.load`` unpickles with ``weights_only=False`` any weight or constant whose config says
    ``use_pickle``, custom and opaque objects, and any embedded torch file (sample inputs, legacy
    constants) that a weights-only load rejects. resnet-deploy never writes such entries (weights are
    raw tensor bytes), so their presence means a crafted or foreign file. The manifest's sha256 cannot
    tell: whoever crafts the program can rewrite the manifest too.
    """
    import io
    import json
    import pickle
    import zipfile
    import zlib

    def refuse(reason: str) -> None:
        raise UserError(
            f"{program_path} was refused: {reason} (loading it could run code)",
            hint="only load int8 artifacts from sources you trust; re-create it with resnet-deploy quantize",
        )

    # What reading one member of a damaged zip raises (bad CRC, unknown compression, encryption, truncation).
    unreadable = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except unreadable as exc:
            raise UserError(f"{program_path} is damaged: its member {name} cannot be read ({exc})") from exc

    try:
        archive = zipfile.ZipFile(program_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{program_path} is not a torch.export program archive: {exc}") from exc
    with archive:
        for name in archive.namelist():
            parts = name.split("/")
            if "custom_objects" in parts or any(part.startswith(("custom_obj", "opaque_obj")) for part in parts):
                refuse(f"it holds a custom or opaque object ({name})")
            if name.endswith("_config.json") and ("weights" in parts or "constants" in parts):
                try:
                    entries = json.loads(read(name)).get("config", {})
                except (ValueError, AttributeError) as exc:
                    raise UserError(f"{program_path} has an unreadable {name}: {exc}") from exc
                if not isinstance(entries, dict):
                    raise UserError(f"{program_path} has an unreadable {name}: its 'config' is not an object")
                for key, entry in entries.items():
                    if not isinstance(entry, dict) or entry.get("use_pickle", False) is not False:
                        refuse(f"entry {key!r} of {name} is stored as a pickle")
                    if "constants" in parts and not str(entry.get("path_name", "")).startswith("tensor"):
                        refuse(f"constant {key!r} is not a tensor")
            elif name.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(read(name)), map_location="cpu", weights_only=True)
                except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as exc:
                    reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # EOFError() has no message
                    refuse(f"{name} holds objects a weights-only load rejects ({reason[:120]})")
