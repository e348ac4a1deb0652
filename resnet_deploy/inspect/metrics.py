"""Per-layer agreement of two implementations, accumulated batch by batch (nothing is kept in memory).

``Agreement.add(reference, candidate)`` takes two observations of one layer (integers on their own
grids or float values) and compares them as real numbers:

* SQNR (dB): 10 log10(sum reference^2 / sum (candidate - reference)^2); infinite when identical.
* cosine similarity of the two tensors, and the largest absolute difference.
* mismatched fraction: the share of elements more than half an int8 step apart. The step is the
  coarser of the two grids; for float observations, the step an int8 quantizer would give the
  reference's range (``max|x| / 127``), so float rounding noise never counts as a mismatch.
* clipped fraction (when the candidate is on a grid): the share of reference values outside the
  range the candidate's grid can hold: what calibration cut off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .taps import Observation

INT8_MAX = 127  # the positive end of the symmetric int8 grid


@dataclass
class Agreement:
    signal: float = 0.0
    noise: float = 0.0
    cross: float = 0.0
    candidate_power: float = 0.0
    max_abs: float = 0.0
    count: int = 0
    mismatched: int = 0
    clipped: int = 0

    def add(self, reference: Observation, candidate: Observation) -> None:
        ref, cand = reference.real().reshape(-1), candidate.real().reshape(-1)
        diff = cand - ref
        self.signal += float((ref * ref).sum())
        self.noise += float((diff * diff).sum())
        self.cross += float((ref * cand).sum())
        self.candidate_power += float((cand * cand).sum())
        self.max_abs = max(self.max_abs, float(diff.abs().max()) if diff.numel() else 0.0)
        self.count += int(ref.numel())
        self.mismatched += int((diff.abs() > _step(reference, candidate, ref) / 2).sum())
        self.clipped += _clipped(ref, candidate)

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.count if self.count else 0.0

    def summary(self) -> dict:
        """JSON-ready figures; an infinite SQNR (identical outputs) is written as null with ``identical``."""
        norms = math.sqrt(self.signal * self.candidate_power)
        sqnr = self.sqnr_db
        return {
            "sqnr_db": finite_or_none(sqnr),
            "identical": self.noise == 0.0,
            "cosine": self.cross / norms if norms else (1.0 if self.noise == 0.0 else 0.0),
            "max_abs_error": self.max_abs,
            "mismatch_fraction": self.mismatch_fraction,
            "clipped_fraction": self.clipped / self.count if self.count else 0.0,
            "elements": self.count,
        }


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _step(reference: Observation, candidate: Observation, ref: torch.Tensor) -> float:
    scales = [obs.scale for obs in (reference, candidate) if obs.scale is not None]
    if scales:
        return max(scales)
    return float(ref.abs().max()) / INT8_MAX if ref.numel() else 0.0


def _clipped(ref: torch.Tensor, candidate: Observation) -> int:
    if candidate.scale is None or candidate.quant_range is None:
        return 0
    low, high = candidate.quant_range
    position = ref / candidate.scale + candidate.zero_point
    return int(((position < low - 0.5) | (position > high + 0.5)).sum())
