"""Logit comparison, defined once: export parity (``export/parity.py``), the benchmark's parity with
its baseline row (``bench/accuracy.py``) and the inspect tools all call :func:`compare_logits`.

numpy only, so that neither the export nor the bench stage imports the other to compare logits.
"""

from __future__ import annotations

import numpy as np


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max/mean |difference|, difference relative to the largest reference logit, top-1 agreement (%).

    Differences are taken in float64. Keys: ``count``, ``max_abs_diff``, ``mean_abs_diff``,
    ``max_rel_diff``, ``top1_agreement``, ``disagreements``; callers that record other names
    (the bench rows' ``agreement``) rename them."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = (float(np.abs(reference).max()) if reference.size else 0.0) or 1.0
    agree = reference.argmax(1) == candidate.argmax(1)
    return {
        "count": int(len(reference)),
        "max_abs_diff": max_abs,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "max_rel_diff": float(max_abs / scale),
        "top1_agreement": float(100.0 * agree.mean()),
        "disagreements": int((~agree).sum()),
    }
