"""Which exported files the bench rows run: export manifests read, several exports of one checkpoint
merged, and each artifact turned into a plain :class:`ExportedFile` (resolved path, precision, int8
scheme, sha256). The runners in ``backends/`` take those paths and never read a manifest; this module is
the one place the bench stage reads what the export stage wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

from ..errors import UserError


def load_export_manifest(export_dir: str | Path) -> dict:
    """The export stage's manifest (``exports/<run>/manifest.json``) through its public loader."""
    from .. import export

    return export.load_manifest(export_dir)


def load_exports(export_dirs: Sequence[str | Path]) -> list[tuple[Path, dict]]:
    """(export directory, its manifest) for each directory, in the order given."""
    return [(Path(d), load_export_manifest(d)) for d in export_dirs]


@dataclass(frozen=True)
class ExportedFile:
    """One artifact of an export manifest, as a runner needs it."""

    kind: str | None  # "onnx", or "tensorrt" (an engine)
    precision: str | None
    path: Path  # the manifest's path; a relative one taken from the export directory
    scheme: str | None = None  # the int8 scheme it was exported for ("cpu", "tensorrt")
    sha256: str | None = None
    compute_capability: Any = None  # an engine's GPU, as the manifest writes it
    onnx: Path | None = None  # the ONNX file an engine was built from

    @classmethod
    def from_manifest(cls, export_dir: Path, artifact: dict) -> "ExportedFile":
        onnx = artifact.get("onnx")
        return cls(
            kind=artifact.get("kind"), precision=artifact.get("precision"), path=_resolve(export_dir, artifact["path"]),
            scheme=artifact.get("scheme"), sha256=artifact.get("sha256"), compute_capability=artifact.get("compute_capability"),
            onnx=_resolve(export_dir, onnx) if onnx else None,
        )

    @property
    def identity(self) -> tuple:
        """What makes two exports' files the same row: (kind, precision, int8 scheme, GPU)."""
        return (self.kind, self.precision, self.scheme, self.compute_capability)

    def checked_path(self) -> Path:
        """The path, once the file there is checked to be the one exported (its sha256, when both the
        file and the manifest's hash are there; a missing file is the runner's to report)."""
        from ..fileio import sha256_file

        if self.sha256 and self.path.is_file() and sha256_file(self.path) != self.sha256:
            raise UserError(f"{self.path} changed since it was exported (sha256 differs from manifest.json)", hint="re-run `resnet-deploy export`")
        return self.path


def _resolve(export_dir: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else export_dir / candidate


@dataclass(frozen=True)
class Exports:
    """The files of the exports given to one bench, each (kind, precision, scheme, GPU) once."""

    dirs: tuple  # the export directories, as given (their names go into skip reasons)
    files: tuple[ExportedFile, ...]
    tensorrt_skip_reasons: tuple  # why an export built no engine (its manifest's "skipped" entries)

    @property
    def names(self) -> str:
        return ", ".join(str(d) for d in self.dirs)

    def select(self, kind: str, precisions: Collection[str] | None = None) -> list[ExportedFile]:
        """The files of ``kind`` (at one of ``precisions`` when given), in manifest order."""
        return [f for f in self.files if f.kind == kind and (precisions is None or f.precision in precisions)]


def merge_exports(exports: Sequence[tuple[str | Path, dict]]) -> Exports:
    """One set of files from (export directory, manifest) pairs.

    Several exports of one checkpoint may be given (e.g. one with the TensorRT-scheme int8 ONNX and
    engines, one with the CPU-scheme int8 ONNX); a file whose identity an earlier export already
    supplied is not repeated.
    """
    files: list[ExportedFile] = []
    seen: set[tuple] = set()
    for export_dir, manifest in exports:
        for artifact in manifest.get("artifacts", []):
            exported = ExportedFile.from_manifest(Path(export_dir), artifact)
            if exported.identity not in seen:
                seen.add(exported.identity)
                files.append(exported)
    reasons = tuple(
        entry.get("reason") for _, manifest in exports for entry in manifest.get("skipped", []) if entry.get("kind") == "tensorrt"
    )
    return Exports(dirs=tuple(d for d, _ in exports), files=tuple(files), tensorrt_skip_reasons=reasons)
