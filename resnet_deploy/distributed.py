"""Multi-process training under torchrun (DDP). Single-process runs get a rank-0-of-1 context."""

from __future__ import annotations

import contextlib
from typing import Iterator

from .train import DistributedContext, TrainConfig


@contextlib.contextmanager
def context_from_environment(config: TrainConfig) -> Iterator[DistributedContext]:
    """The rank layout of this process; torchrun support is added by the distributed stage."""
    yield DistributedContext()
