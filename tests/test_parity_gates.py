"""The parity gates on known numbers: compare_logits, judge's thresholds at and around their limits,
check_parity on a one-layer ONNX graph, the exact int8 reference on a hand-built Q/DQ graph, and the
bench's --verify gates on hand-written rows. Fast (no model, no export): the parity mutation group's
tests (scripts/mutation.cfg)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from resnet_deploy.bench.settings import Thresholds
from resnet_deploy.bench.verify import apply_verification, raise_if_failed, verify_results
from resnet_deploy.compare import compare_logits
from resnet_deploy.data import Normalization
from resnet_deploy.errors import UserError, VerificationError
from resnet_deploy.export.parity import THRESHOLDS, ExactQDQReference, ParityInputs, check_parity, describe_failure, judge

# ------------------------------------------------------------------------------------- compare_logits


def test_compare_logits_on_known_logits():
    reference = np.array([[1.0, 4.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]], np.float32)
    candidate = reference + np.array([[0, 0, 0.5], [0, 2.5, 0], [0, 0, -0.25], [0, 0, 0]], np.float32)
    stats = compare_logits(reference, candidate)
    assert stats == {"count": 4, "max_abs_diff": 2.5, "mean_abs_diff": pytest.approx(3.25 / 12), "max_rel_diff": 2.5 / 4.0,
                     "top1_agreement": 75.0, "disagreements": 1}


def test_compare_logits_edge_cases():
    with pytest.raises(ValueError, match=r"logit shapes differ: \(2, 3\) vs \(2, 4\)"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)))
    # A zero reference: differences relative to 1, not a division by zero.
    assert compare_logits(np.zeros((2, 3)), np.full((2, 3), 0.5))["max_rel_diff"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # top-1 agreement of no rows is NaN
        empty = compare_logits(np.zeros((0, 3)), np.zeros((0, 3)))
    assert (empty["count"], empty["max_abs_diff"], empty["mean_abs_diff"], empty["max_rel_diff"], empty["disagreements"]) == (0, 0.0, 0.0, 0.0, 0)


# ------------------------------------------------------------------------------------------------ judge


def test_top1_agreement_at_its_limit_passes_just_under_fails():
    limits = THRESHOLDS["int8"]
    assert judge({"top1_agreement": 99.5}, limits) == []
    assert judge({"top1_agreement": 99.49}, limits) == ["top1_agreement 99.49% < 99.5%"]
    assert judge({"top1_agreement": 100.0}, {"top1_agreement": 100.0}) == []


def test_difference_limits_are_strict():
    limits = THRESHOLDS["fp32"]
    assert judge({"max_abs_diff": 0.99e-4, "top1_agreement": 100.0}, limits) == []
    assert judge({"max_abs_diff": 1e-4, "top1_agreement": 100.0}, limits) == ["max_abs_diff 0.0001 >= 0.0001"]
    assert judge({"max_abs_diff": 3.1e-3, "top1_agreement": 99.0}, limits) == ["max_abs_diff 0.0031 >= 0.0001", "top1_agreement 99.00% < 100.0%"]
    assert judge({"max_rel_diff": 1e-2, "top1_agreement": 98.0}, THRESHOLDS["fp16"]) == ["max_rel_diff 0.01 >= 0.01"]
    assert judge({"max_rel_diff": float("nan"), "top1_agreement": 98.0}, THRESHOLDS["fp16"]) == ["max_rel_diff nan >= 0.01"]


def test_describe_failure_names_the_artifact_the_reference_and_the_criteria():
    record = {"reference": "pytorch-fp32", "count": 64, "failures": ["max_abs_diff 0.0031 >= 0.0001", "top1_agreement 99.00% < 100.0%"]}
    assert describe_failure("model-fp32.onnx", record) == (
        "model-fp32.onnx: parity vs pytorch-fp32 failed on 64 inputs (max_abs_diff 0.0031 >= 0.0001; top1_agreement 99.00% < 100.0%)")


# ----------------------------------------------------------------------------------------- check_parity

NORM = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _linear_onnx(path, weight: np.ndarray, bias: np.ndarray):
    """Flatten -> Gemm: logits = x.reshape(N, -1) @ weight.T + bias."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 0.01, (10, 3072)).astype(np.float32), rng.normal(0, 1, 10).astype(np.float32)
    path = _linear_onnx(tmp_path_factory.mktemp("parity") / "linear.onnx", weight, bias)
    w, b = torch.from_numpy(weight), torch.from_numpy(bias)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    return path, (lambda x: x.reshape(len(x), -1) @ w.T + b), images


def test_check_parity_passes_the_same_model_and_records_the_comparison(linear):
    path, model, images = linear
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    record = check_parity(path, model, ParityInputs(images, NORM, "ten images", labels), "fp32", batch_size=3, threads=1)
    assert record["passed"] and record["failures"] == [] and record["thresholds"] == THRESHOLDS["fp32"]
    assert record["reference"] == "pytorch-fp32" and record["inputs"] == "ten images" and record["count"] == 10
    assert record["runtime"].startswith("onnxruntime ") and record["runtime"].endswith(" CPUExecutionProvider")
    assert record["max_abs_diff"] < 1e-4 and record["top1_agreement"] == 100.0
    predicted = np.concatenate([model(ParityInputs(images, NORM, "").tensor(i, i + 1)).argmax(1).numpy() for i in range(10)])
    assert record["reference_top1"] == record["onnx_top1"] == 100.0 * float((predicted == labels).mean())
    assert "compared_with" not in record


def test_check_parity_fails_a_different_model_and_names_the_criterion(linear):
    path, model, images = linear
    record = check_parity(path, lambda x: model(x) + 1e-3, ParityInputs(images, NORM, "ten images"), "fp32")
    assert not record["passed"] and [f.split()[0] for f in record["failures"]] == ["max_abs_diff"]
    assert "reference_top1" not in record
    record = check_parity(path, lambda x: model(x) + 1e-3, ParityInputs(images, NORM, "ten images"), "fp32", thresholds={"max_abs_diff": 1e-2})
    assert record["passed"] and record["thresholds"] == {"max_abs_diff": 1e-2}


def test_check_parity_int8_reference_and_the_references_compared_beside_it(linear):
    path, model, images = linear
    shifted = lambda x: model(x) + 0.5  # noqa: E731 (same ranking, logits 0.5 off)
    record = check_parity(path, model, ParityInputs(images, NORM, "ten images"), "int8", also_compare={"shifted": shifted})
    assert record["reference"] == "pytorch-int8-qdq" and record["thresholds"] == THRESHOLDS["int8"] and record["passed"]
    other = record["compared_with"]["shifted"]
    assert other["onnx_top1_agreement"] == other["reference_top1_agreement"] == 100.0
    assert other["onnx_max_abs_diff"] == pytest.approx(0.5, abs=1e-4) and other["reference_max_abs_diff"] == pytest.approx(0.5, abs=1e-6)
    assert check_parity(path, model, ParityInputs(images, NORM, "x"), "fp16", reference_name="mine")["reference"] == "mine"


# ------------------------------------------------------------------------------- the exact int8 reference


def _qdq_module(layer: str, per_channel: bool, x_zero: int, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor):
    """x -> quantize/dequantize (per tensor) -> conv2d or linear with a dequantized int8 weight: the
    converted PT2E program's form, built by hand with the quantized_decomposed ops."""
    from resnet_deploy.quantize.artifact import register_quant_ops

    register_quant_ops()
    ops = torch.ops.quantized_decomposed
    root = torch.nn.Module()
    root.register_buffer("w", weight)
    root.register_buffer("w_scale", w_scale)
    root.register_buffer("w_zero", torch.zeros(len(w_scale), dtype=torch.int64))
    root.register_buffer("bias", bias)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    q = graph.call_function(ops.quantize_per_tensor.default, (x, 0.05, x_zero, -128, 127, torch.int8))
    x_dq = graph.call_function(ops.dequantize_per_tensor.default, (q, 0.05, x_zero, -128, 127, torch.int8))
    w = graph.get_attr("w")
    if per_channel:
        w_dq = graph.call_function(ops.dequantize_per_channel.default, (w, graph.get_attr("w_scale"), graph.get_attr("w_zero"), 0, -127, 127, torch.int8))
    else:
        w_dq = graph.call_function(ops.dequantize_per_tensor.default, (w, float(w_scale[0]), 0, -127, 127, torch.int8))
    if layer == "conv":
        out = graph.call_function(torch.ops.aten.conv2d.default, (x_dq, w_dq, graph.get_attr("bias"), [1, 1], [1, 1]))
    else:
        out = graph.call_function(torch.ops.aten.linear.default, (x_dq, w_dq, graph.get_attr("bias")))
    graph.output(out)
    return torch.fx.GraphModule(root, graph)


def _integer_expected(layer: str, x: torch.Tensor, x_zero: int, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What an int8 kernel computes, in float64 (exact for these integers): the sum of integer products,
    scaled by x_scale * w_scale, plus the bias."""
    x_q = (torch.round(x.double() / 0.05) + x_zero).clamp(-128, 127) - x_zero
    w_int = weight.double()
    shape = [1, -1] + [1] * (x.dim() - 2)
    if layer == "conv":
        accumulated = torch.nn.functional.conv2d(x_q, w_int, None, 1, 1)
    else:
        accumulated = x_q @ w_int.T
    return (accumulated * (0.05 * w_scale.double()).view(shape) + bias.double().view(shape)).float()


@pytest.mark.parametrize("layer, per_channel, x_zero", [("conv", True, 0), ("conv", False, 3), ("linear", True, -2)])
def test_exact_reference_computes_the_integer_result(layer, per_channel, x_zero):
    generator = torch.Generator().manual_seed(0)
    shape, x_shape = ((6, 4, 3, 3), (2, 4, 5, 5)) if layer == "conv" else ((6, 40), (3, 40))
    weight = torch.randint(-127, 128, shape, generator=generator, dtype=torch.int8)
    w_scale = (torch.rand(6, generator=generator, dtype=torch.float64) * 0.01 + 0.001).float()
    if not per_channel:
        w_scale = w_scale[:1].expand(6).contiguous()
    bias = torch.randn(6, generator=generator)
    x = torch.randn(x_shape, generator=generator) * 3
    module = _qdq_module(layer, per_channel, x_zero, weight, w_scale, bias)
    exact = ExactQDQReference(module)(x)
    expected = _integer_expected(layer, x, x_zero, weight, w_scale, bias)
    assert exact.dtype == torch.float32 and torch.equal(exact, expected)
    with torch.no_grad():
        emulated = module(x)
    assert (exact - emulated).abs().max() < 1e-4  # the float32 emulation: the same model, up to rounding


def test_exact_reference_accumulates_in_float64_past_float32s_exact_range():
    """127 * 127 * 2048 > 2**24: the integer sums no longer fit float32's mantissa; still exact."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randint(100, 128, (4, 2048), generator=generator, dtype=torch.int8)
    w_scale, bias = torch.full((4,), 0.001), torch.zeros(4)
    x = 0.05 * torch.randint(100, 128, (2, 2048), generator=generator).float()
    exact = ExactQDQReference(_qdq_module("linear", True, 0, weight, w_scale, bias))(x)
    integer = (torch.round(x.double() / 0.05) @ weight.double().T)
    assert integer.max() > 2**24
    assert torch.equal(exact, (integer * (0.05 * w_scale.double())).float())


# -------------------------------------------------------------------------------------- bench --verify


def _row(name: str, precision: str, status: str = "ok", **accuracy) -> dict:
    return {"name": name, "precision": precision, "status": status, "reason": "no GPU" if status != "ok" else None,
            "latency": [{"status": "ok"}], "accuracy": accuracy or None}


def _bench(*rows: dict) -> dict:
    return {"baseline": "pytorch-fp32", "rows": [_row("pytorch-fp32", "fp32", agreement=100.0, delta_top1=0.0, top1=90.0), *rows]}


def test_verify_gates_each_precision_at_its_threshold():
    thresholds = Thresholds()
    at_limits = _bench(_row("ort-fp32", "fp32", agreement=100.0), _row("ort-fp16", "fp16", agreement=99.9),
                       _row("ort-bf16", "bf16", agreement=99.9), _row("ort-int8", "int8", delta_top1=-0.5, top1=89.5))
    assert verify_results(at_limits, thresholds) == []
    past = _bench(_row("ort-fp32", "fp32", agreement=99.99), _row("ort-fp16", "fp16", agreement=99.89),
                  _row("ort-bf16", "bf16", agreement=99.8), _row("ort-int8", "int8", delta_top1=-0.51, top1=89.49))
    failures = verify_results(past, thresholds)
    assert [(f["row"], f["check"], f["value"], f["threshold"]) for f in failures] == [
        ("ort-fp32", "top-1 agreement", 99.99, 100.0), ("ort-fp16", "top-1 agreement", 99.89, 99.9),
        ("ort-bf16", "top-1 agreement", 99.8, 99.9), ("ort-int8", "top-1 drop", 0.51, 0.5)]
    assert failures[0]["message"] == "ort-fp32: top-1 agreement with FP32 PyTorch 99.99% < 100.0%"
    assert failures[3]["message"] == "ort-int8: top-1 drop 0.51 points > 0.5 (top-1 89.49% vs FP32 PyTorch 90.00%)"


def test_verify_skips_skipped_rows_and_fails_errors_and_nonfinite_outputs():
    errored = _row("trt-int8", "int8", status="error")
    nonfinite = _row("ort-fp16", "fp16", agreement=100.0)
    nonfinite["latency"] = [{"status": "ok"}, {"status": "nonfinite", "message": "ort-fp16: NaN at batch 8"}]
    no_accuracy = _row("ort-int8", "int8")
    results = _bench(_row("gpu-fp32", "fp32", status="skipped"), errored, nonfinite, no_accuracy)
    failures = verify_results(results, Thresholds())
    assert [(f["row"], f["check"], f["message"]) for f in failures] == [
        ("trt-int8", "ran", "trt-int8: error: no GPU"), ("ort-fp16", "finite outputs", "ort-fp16: NaN at batch 8")]
    # The baseline row is what the others are judged against, never judged itself.
    assert verify_results({"baseline": "b", "rows": [_row("b", "int8", delta_top1=-5.0, top1=1.0)]}, Thresholds()) == []


def test_apply_verification_records_the_verdict_and_raise_if_failed_names_the_rows():
    results = _bench(_row("ort-int8", "int8", delta_top1=-2.0, top1=88.0))
    verdict = apply_verification(results, Thresholds(int8_max_top1_drop=1.0))
    assert results["verification"] is verdict and not verdict["passed"]
    assert verdict["thresholds"] == {"fp32_min_agreement": 100.0, "fp16_min_agreement": 99.9, "int8_max_top1_drop": 1.0}
    with pytest.raises(VerificationError) as failed:
        raise_if_failed(results)
    assert str(failed.value) == "1 row(s) missed a threshold:\n  ort-int8: top-1 drop 2.00 points > 1.0 (top-1 88.00% vs FP32 PyTorch 90.00%)"
    passing = _bench(_row("ort-int8", "int8", delta_top1=-2.0, top1=88.0))
    assert apply_verification(passing, Thresholds(int8_max_top1_drop=2.0))["passed"]
    raise_if_failed(passing)
    raise_if_failed({"rows": []})  # no --verify: nothing to raise
    with pytest.raises(UserError, match="--verify needs the accuracy pass"):
        apply_verification({"baseline": "b", "rows": [{"name": "b", "accuracy": None}]}, Thresholds())


@pytest.mark.parametrize(
    "thresholds, option",
    [(Thresholds(fp32_min_agreement=100.01), "--min-fp32-agreement"), (Thresholds(fp16_min_agreement=-0.01), "--min-fp16-agreement"),
     (Thresholds(fp16_min_agreement=float("nan")), "--min-fp16-agreement"), (Thresholds(int8_max_top1_drop=-0.01), "--max-int8-drop"),
     (Thresholds(int8_max_top1_drop=100.5), "--max-int8-drop"), (Thresholds(int8_max_top1_drop=float("nan")), "--max-int8-drop")],
)
def test_thresholds_outside_their_range_are_refused(thresholds, option):
    with pytest.raises(UserError, match=f"^{option} must be"):
        thresholds.validate()


def test_thresholds_at_the_ends_of_their_range_are_accepted():
    Thresholds(fp32_min_agreement=0.0, fp16_min_agreement=100.0, int8_max_top1_drop=0.0).validate()
    Thresholds(fp32_min_agreement=100.0, fp16_min_agreement=0.0, int8_max_top1_drop=100.0).validate()
