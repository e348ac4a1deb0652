"""What the bench command asks of its runners: which backends and precisions, and how each runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import UserError
from .base import BACKENDS, PRECISIONS, parse_device
from .openvino import PERFORMANCE_HINTS


@dataclass
class RunnerOptions:
    """Which rows to build and how they run (the ``bench`` command's options)."""

    backends: Sequence[str] = BACKENDS
    precisions: Sequence[str] = PRECISIONS
    device: str = "cpu"  # PyTorch FP32/FP16/BF16 rows; int8 PyTorch always runs on the CPU
    threads: int | None = None  # CPU threads (torch and ONNX Runtime intra-op); default physical cores
    compile: bool = False
    channels_last: bool = False
    ort_provider: str = "cpu"
    graph_optimization: str = "all"
    cuda_graph: bool = False
    device_id: int = 0
    ov_hint: str = "latency"  # OpenVINO PERFORMANCE_HINT: latency | throughput
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        for backend in self.backends:
            if backend not in BACKENDS:
                raise UserError(f"--backend must be among {', '.join(BACKENDS)} (or all), got {backend!r}")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise UserError(f"--precision must be among {', '.join(PRECISIONS)} (or all), got {precision!r}")
        if self.ov_hint not in PERFORMANCE_HINTS:
            raise UserError(f"--ov-hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {self.ov_hint!r}")
        parse_device(self.device)  # cuda:, cuda:-1, CUDA, " cpu", meta: refused with the option named
        if not (isinstance(self.device_id, int) and 0 <= self.device_id <= 9999):
            raise UserError(f"the GPU number must be 0..9999, got {self.device_id!r}")
