"""What an engine build is asked for, validated once: precision, batch range, builder limits, target."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UserError
from ..onnx_file import MODEL_PRECISIONS

ENGINE_PRECISIONS = MODEL_PRECISIONS
IMAGE_SHAPE = (3, 32, 32)


def check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise UserError(
            f"batch range must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got {min_batch}/{opt_batch}/{max_batch}"
        )


@dataclass(frozen=True)
class BatchRange:
    """The optimisation profile's batches: ``min..max``, tuned for ``opt``."""

    min: int = 1
    opt: int = 64
    max: int = 256

    def __post_init__(self) -> None:
        check_batches(self.min, self.opt, self.max)

    @classmethod
    def fixed(cls, batch: int) -> BatchRange:
        """A static-batch ONNX: all three are its batch."""
        return cls(batch, batch, batch)

    def input_shapes(self) -> dict[str, list[int]]:
        """{"min", "opt", "max"} input shapes, as the profile and the sidecar record them."""
        return {key: [batch, *IMAGE_SHAPE] for key, batch in (("min", self.min), ("opt", self.opt), ("max", self.max))}


@dataclass(frozen=True)
class BuildSettings:
    """One engine build's options (``build_engine``'s keywords, validated on construction).

    ``workspace_mb`` caps the builder's scratch memory, ``opt_level`` is the builder optimisation level
    (0-5; higher searches longer for faster kernels), ``timing_cache`` a file read before and written
    after the build (full TensorRT; TensorRT-RTX has none), ``compute_capability`` the target GPU
    (default: the current one).
    """

    precision: str
    batches: BatchRange = BatchRange()
    workspace_mb: int = 1024
    opt_level: int = 3
    timing_cache: str | os.PathLike | None = None
    compute_capability: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise UserError(f"engine precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mb < 16:
            raise UserError(f"--workspace-mb must be at least 16, got {self.workspace_mb}")
        if not 0 <= self.opt_level <= 5:
            raise UserError(f"--opt-level must be 0..5, got {self.opt_level}")
