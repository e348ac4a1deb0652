"""Per-layer sensitivity: which layers lose accuracy when quantized, and a mixed-precision plan.

One calibration serves every experiment: PTQ observers see FP32 activations, so the ranges they choose
do not depend on which other layers are quantized. Each observer of the calibrated model is replaced
by a switchable fake-quantizer with its final scale and zero-point, and a layer's switch covers the
quantization points it owns: its weight, the activation it reads, and the activation it writes into a
residual add. Then:

* ``only``: quantize one layer, everything else FP32; the loss is that layer's own damage.
* ``leave-out``: quantize everything except one layer; the gain is what keeping it in float buys.

Accuracy is measured on training images held out from calibration (labels known, never the test split,
so the plan is not tuned on the numbers it is judged by). The plan keeps the most sensitive layers in
floating point (FP16 on TensorRT, FP32 on CPU) while they account for a meaningful share of the loss,
and is verified: the full PTQ with the plan's ``keep_float`` is run and measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import progress
from ..checkpoint import LoadedModel, check_dataset_matches
from ..data import ImageDataset, calibration_indices
from ..evaluation import classification_metrics, predict_logits
from ..fileio import write_json
from . import calibration
from .calibration import calibration_batches, check_calib_size, run_calibration
from .capture import capture
from .ptq import DEFAULT_CALIB_SIZE, ptq_convert
from .quantizer import CONV_OPS, LINEAR_OPS, build_quantizer, layer_name, scheme_for

MODES = ("only", "leave-out")


class _SwitchableFakeQuant(torch.nn.Module):
    """Fake-quantizes with fixed qparams when ``enabled``; identity otherwise."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int, axis: int | None) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(-1))
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).reshape(-1))
        self.quant_min, self.quant_max, self.axis = quant_min, quant_max, axis
        self.enabled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale[0]), int(self.zero_point[0]), self.quant_min, self.quant_max)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.quant_min, self.quant_max)


def _switchable(prepared: torch.fx.GraphModule) -> dict[str, _SwitchableFakeQuant]:
    """Replace every calibrated observer of ``prepared`` by a switchable fake-quantizer."""
    from torchao.quantization.pt2e import ObserverBase

    switches = {}
    for name, module in list(prepared.named_children()):
        if isinstance(module, ObserverBase):
            scale, zero_point = module.calculate_qparams()
            per_channel = module.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
            switch = _SwitchableFakeQuant(scale, zero_point, module.quant_min, module.quant_max, module.ch_axis if per_channel else None)
            setattr(prepared, name, switch)
            switches[name] = switch
    return switches


def _observer_of(node) -> str | None:
    if isinstance(node, torch.fx.Node) and node.op == "call_module":
        return str(node.target)
    return None


def _layer_groups(prepared: torch.fx.GraphModule, switches: dict) -> dict[str, set[str]]:
    """For each quantizable layer, the observers it owns: weight, input activation, and its output
    (through BN/ReLU-free paths) where that output is quantized for a residual add."""
    groups: dict[str, set[str]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in CONV_OPS | LINEAR_OPS:
            continue
        owned = {_observer_of(node.args[0]), _observer_of(node.args[1])}
        for user in node.users:
            owned.add(_observer_of(user))
        owned = {name for name in owned if name in switches}
        if owned:
            groups.setdefault(layer_name(node), set()).update(owned)
    return groups


def sensitivity_analysis(
    loaded: LoadedModel,
    dataset: ImageDataset,
    report_path: str | Path | None = None,
    *,
    target: str = "tensorrt",
    method: str = calibration.DEFAULT_METHOD,
    calib_size: int = DEFAULT_CALIB_SIZE,
    percentile: float = calibration.DEFAULT_PERCENTILE,
    mode: str = "only",
    eval_images: int = 2000,
    max_float_layers: int = 2,
    min_share: float = 0.1,
    verify_plan: bool = True,
    bias_correction: bool = True,
) -> dict:
    """Rank layers by the top-1 they lose when quantized; write the report (JSON) and return it.

    The mixed-precision plan lists up to ``max_float_layers`` layers, most sensitive first, each
    accounting for at least ``min_share`` of the summed per-layer loss.
    """
    _check_mode(mode)
    scheme = scheme_for(target)
    check_dataset_matches(loaded, dataset.classes, dataset.name)
    check_calib_size(calib_size, dataset)
    start = time.perf_counter()
    prepared = _calibrated(loaded, dataset, scheme, method, calib_size, percentile)
    switches = _switchable(prepared)
    groups = _layer_groups(prepared, switches)
    probe = _Probe(prepared, switches, loaded, *_held_out_images(dataset, calib_size, eval_images))
    full = probe.measure(set(switches))
    rows = _rank_layers(probe, groups, mode, full)
    key = _score_key(mode)
    plan = _float_plan(rows, key, max_float_layers, min_share)
    rule = f"most sensitive first, at most {max_float_layers}, each >= {min_share:.0%} of the summed per-layer {key}"
    report = _report(loaded, probe, target=target, method=method, mode=mode, full=full, rows=rows, plan=plan, rule=rule)
    if verify_plan and plan:
        converted, _ = ptq_convert(
            loaded.model, calibration_batches(dataset, calib_size), loaded.normalization, target=target, method=method,
            percentile=percentile, keep_float=plan, bias_correction=bias_correction,
        )
        report["plan"]["verified"] = {"bias_correction": bias_correction, **probe.accuracy_of(converted)}
    report["seconds"] = time.perf_counter() - start
    if report_path is not None:
        write_json(report_path, report)
    return report


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        from ..errors import UserError

        raise UserError(f"--sensitivity-mode must be one of {', '.join(MODES)}, got {mode!r}")


def _calibrated(loaded: LoadedModel, dataset: ImageDataset, scheme, method: str, calib_size: int, percentile: float) -> torch.fx.GraphModule:
    """The captured model with observers for every quantization point, calibrated once (PTQ)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    prepared = prepare_pt2e(capture(loaded.model), build_quantizer(scheme, method, percentile, ()))
    run_calibration(prepared, calibration_batches(dataset, calib_size), loaded.normalization)
    return prepared


class _Probe:
    """The calibrated model with its switches, measured on held-out images against the FP32 model."""

    def __init__(self, prepared, switches: dict[str, _SwitchableFakeQuant], loaded: LoadedModel,
                 images: np.ndarray, labels: np.ndarray, source: str) -> None:
        self.prepared, self.switches, self.normalization = prepared, switches, loaded.normalization
        self.images, self.labels, self.source = images, labels, source
        self.fp32_logits = predict_logits(loaded.model.eval(), images, self.normalization)
        self.fp32_top1 = classification_metrics(self.fp32_logits, labels)["top1"]

    def measure(self, enabled: set[str]) -> dict:
        """Top-1, agreement with FP32 and logit MSE with only the ``enabled`` switches quantizing."""
        for name, switch in self.switches.items():
            switch.enabled = name in enabled
        logits = predict_logits(self.prepared, self.images, self.normalization)
        return {**self._scores(logits), "logit_mse": float(((logits - self.fp32_logits) ** 2).mean())}

    def accuracy_of(self, model) -> dict:
        """Top-1 and agreement with FP32 of another model on the same images."""
        return self._scores(predict_logits(model, self.images, self.normalization))

    def _scores(self, logits: torch.Tensor) -> dict:
        return {
            "top1": classification_metrics(logits, self.labels)["top1"],
            "agreement": 100.0 * (logits.argmax(1) == self.fp32_logits.argmax(1)).float().mean().item(),
        }


def _score_key(mode: str) -> str:
    """``only``: the top-1 a layer loses quantized alone; ``leave-out``: what leaving it float gains."""
    return "loss_top1" if mode == "only" else "gain_top1"


def _rank_layers(probe: _Probe, groups: dict[str, set[str]], mode: str, full: dict) -> list[dict]:
    """One row per layer, most sensitive first (``rank`` 1)."""
    everything = set(probe.switches)
    key = _score_key(mode)
    rows = []
    with progress.bar(f"sensitivity ({mode})", len(groups)) as bar:
        for layer, owned in groups.items():
            result = probe.measure(owned if mode == "only" else everything - owned)
            score = probe.fp32_top1 - result["top1"] if mode == "only" else result["top1"] - full["top1"]
            rows.append({"layer": layer, "quantizers": sorted(owned), **result, key: score})
            bar.advance(1)
    # Accuracy moves in steps of one image; the logit error breaks ties (bigger error, more sensitive
    # when quantizing it alone; smaller error left, more gained when leaving it out).
    rows.sort(key=lambda row: (-row[key], -row["logit_mse"] if mode == "only" else row["logit_mse"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _float_plan(rows: list[dict], key: str, max_float_layers: int, min_share: float) -> list[str]:
    """The layers to keep in float: the first ``max_float_layers`` rows that each carry at least
    ``min_share`` of the summed positive scores."""
    total = sum(max(row[key], 0.0) for row in rows)
    return [row["layer"] for row in rows[:max_float_layers] if row[key] > 0 and total > 0 and row[key] >= min_share * total]


def _report(loaded: LoadedModel, probe: _Probe, *, target: str, method: str, mode: str, full: dict, rows: list[dict],
            plan: list[str], rule: str) -> dict:
    return {
        "model": loaded.spec.to_dict(),
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256},
        "target": target,
        "method": method,
        "mode": mode,
        "evaluated_on": probe.source,
        "images": int(len(probe.images)),
        "fp32_top1": probe.fp32_top1,
        "all_int8": full,
        "layers": rows,
        "plan": {"keep_float": plan, "precision": "fp16" if target == "tensorrt" else "fp32", "rule": rule},
    }


def _held_out_images(dataset: ImageDataset, calib_size: int, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images outside the calibration split (deterministic), for label-aware ranking."""
    calib = set(calibration_indices(len(dataset.train_images), calib_size).tolist())
    rest = np.array([i for i in range(len(dataset.train_images)) if i not in calib])
    if len(rest) == 0:
        raise ValueError("no training images left outside the calibration split")
    chosen = np.sort(np.random.default_rng(7).permutation(rest)[: min(count, len(rest))])
    return dataset.train_images[chosen], dataset.train_labels[chosen], f"{len(chosen)} training images outside the calibration split (seed 7)"
