"""``--verify``: each row against the :class:`~.settings.Thresholds` for its precision; the verdict
goes into ``results["verification"]`` and :func:`raise_if_failed` turns a failure into exit code 1."""

from __future__ import annotations

from dataclasses import asdict

from ..errors import UserError, VerificationError
from .settings import Thresholds


def verify_results(results: dict, thresholds: Thresholds) -> list[dict]:
    """Rows that miss a threshold (empty list: all pass). Skipped rows are not failures; errors are."""
    failures = []
    baseline = results["baseline"]
    for row in results["rows"]:
        name = row["name"]
        if row["status"] == "skipped" or name == baseline:
            continue
        if row["status"] != "ok":
            failures.append(_failure(name, "ran", row["status"], "ok", f"{name}: {row['status']}: {row['reason']}"))
            continue
        for entry in row["latency"]:
            if entry["status"] == "nonfinite":
                failures.append(_failure(name, "finite outputs", "NaN/inf", "finite", entry["message"]))
        accuracy = row.get("accuracy")
        if accuracy is None:
            continue
        precision = row["precision"]
        if precision == "fp32" and accuracy["agreement"] < thresholds.fp32_min_agreement:
            failures.append(
                _failure(name, "top-1 agreement", accuracy["agreement"], thresholds.fp32_min_agreement,
                         f"{name}: top-1 agreement with FP32 PyTorch {accuracy['agreement']:.2f}% < {thresholds.fp32_min_agreement}%")
            )
        elif precision in ("fp16", "bf16") and accuracy["agreement"] < thresholds.fp16_min_agreement:
            failures.append(
                _failure(name, "top-1 agreement", accuracy["agreement"], thresholds.fp16_min_agreement,
                         f"{name}: top-1 agreement with FP32 PyTorch {accuracy['agreement']:.2f}% < {thresholds.fp16_min_agreement}%")
            )
        elif precision == "int8" and -accuracy["delta_top1"] > thresholds.int8_max_top1_drop:
            failures.append(
                _failure(name, "top-1 drop", -accuracy["delta_top1"], thresholds.int8_max_top1_drop,
                         f"{name}: top-1 drop {-accuracy['delta_top1']:.2f} points > {thresholds.int8_max_top1_drop} (top-1 {accuracy['top1']:.2f}% vs FP32 PyTorch {accuracy['top1'] - accuracy['delta_top1']:.2f}%)")
            )
    return failures


def _failure(row: str, check: str, value, threshold, message: str) -> dict:
    return {"row": row, "check": check, "value": value, "threshold": threshold, "message": message}


def apply_verification(results: dict, thresholds: Thresholds) -> dict:
    """Add ``results["verification"]``; the caller decides whether failures end the command."""
    if not any(row.get("accuracy") for row in results["rows"]):
        raise UserError("--verify needs the accuracy pass; drop --no-accuracy")
    failures = verify_results(results, thresholds)
    results["verification"] = {"thresholds": asdict(thresholds), "passed": not failures, "failures": failures}
    return results["verification"]


def raise_if_failed(results: dict) -> None:
    verification = results.get("verification")
    if verification and not verification["passed"]:
        lines = [failure["message"] for failure in verification["failures"]]
        raise VerificationError(f"{len(lines)} row(s) missed a threshold:\n  " + "\n  ".join(lines))
