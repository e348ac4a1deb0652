"""What a benchmark measures (:class:`BenchSettings`), what ``--verify`` gates (:class:`Thresholds`),
and the results document's format tag; both settings objects are recorded in the results."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError

RESULTS_FORMAT = "resnet-deploy/bench"
RESULTS_VERSION = 1


@dataclass
class BenchSettings:
    """How a benchmark measures; recorded in the results."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128, 256])
    include_copies: bool = True
    accuracy_batch_size: int = 500
    warmup_iterations: int = 5
    warmup_seconds: float = 0.3
    min_iterations: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 5.0
    target_rel_error: float = 0.01
    latency: bool = True
    accuracy: bool = True

    def validate(self) -> None:
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise UserError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        if self.accuracy_batch_size <= 0:
            raise UserError(f"--accuracy-batch-size must be positive, got {self.accuracy_batch_size}")
        if self.min_iterations < 1 or self.warmup_iterations < 0:
            raise UserError("--min-iterations must be >= 1 and --warmup >= 0")
        if not (0 <= self.min_seconds <= self.max_seconds):
            raise UserError(f"--min-time ({self.min_seconds}) must be between 0 and --max-time ({self.max_seconds})")


@dataclass
class Thresholds:
    """``--verify`` gates. Agreement is top-1 agreement with FP32 PyTorch in percent; the int8 drop is
    FP32 PyTorch top-1 minus the row's top-1, in percentage points."""

    fp32_min_agreement: float = 100.0
    fp16_min_agreement: float = 99.9
    int8_max_top1_drop: float = 0.5

    def validate(self) -> None:
        # A NaN threshold would pass every row (any comparison with NaN is False): refuse it.
        for option, value in (("--min-fp32-agreement", self.fp32_min_agreement), ("--min-fp16-agreement", self.fp16_min_agreement)):
            if not (0.0 <= value <= 100.0):
                raise UserError(f"{option} must be a percentage between 0 and 100, got {value}")
        if not (0.0 <= self.int8_max_top1_drop <= 100.0):
            raise UserError(f"--max-int8-drop must be between 0 and 100 percentage points, got {self.int8_max_top1_drop}")
