"""Program capture: the FP32 model as an ATen graph (PTQ, QAT, sensitivity, inspect) and the converted
model as a serialisable program, both with a dynamic batch dimension."""

from __future__ import annotations

import copy

import torch

MAX_BATCH = 65536


def batch_dim():
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def example_input(batch: int = 2) -> torch.Tensor:
    # A batch of 2: torch.export specialises dimensions of size 0 and 1, never 2, so the batch
    # dimension stays symbolic.
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def export_program(module: torch.nn.Module) -> torch.export.ExportedProgram:
    """``module`` as a serialisable program with a dynamic batch dimension (for the converted model)."""
    return torch.export.export(module, (example_input(),), dynamic_shapes=({0: batch_dim()},))


def capture(model: torch.nn.Module) -> torch.fx.GraphModule:
    """torch.export the FP32 model (eval mode, dynamic batch) and return the ATen graph module.

    The graph gets its own copy of the weights: later passes (BN folding, bias correction) change
    them in place and must never reach the caller's model.
    """
    return export_program(copy.deepcopy(model).eval()).module()


def capture_for_training(model: torch.nn.Module) -> torch.fx.GraphModule:
    """torch.export in train mode (BatchNorm updates its statistics), for QAT; on a copy of ``model``."""
    return export_program(copy.deepcopy(model).train()).module()
