"""The quantize stage: quantizer placement, calibration methods, PTQ/QAT accuracy, artifact integrity."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.cli import main
from resnet_deploy.errors import UserError
from resnet_deploy.models import create_model

pytest.importorskip("torchao")

from resnet_deploy.quantize import METHODS, load_quantized, quantize_ptq, quantize_qat  # noqa: E402
from resnet_deploy.quantize.artifact import extract_qparams  # noqa: E402
from resnet_deploy.quantize.calibration import histogram_observer_class  # noqa: E402
from resnet_deploy.quantize.ptq import ptq_convert  # noqa: E402
from resnet_deploy.quantize.quantizer import scheme_for  # noqa: E402

QD = torch.ops.quantized_decomposed
DEQUANT_TENSOR = {QD.dequantize_per_tensor.default}
DEQUANT_CHANNEL = {QD.dequantize_per_channel.default}


def _convert(model, images, normalization, **kwargs):
    model.eval()
    converted, _ = ptq_convert(model, images, normalization, **kwargs)
    return converted


@pytest.fixture(scope="module")
def tiny_data(synthetic):
    return synthetic.train_images[:64], synthetic.normalization


# ----------------------------------------------------------------------------------------- quantizer


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_tensorrt_scheme_is_symmetric_int8_zero_point_zero_per_channel_weights(tiny_data, shortcut):
    images, norm = tiny_data
    converted = _convert(create_model("resnet20", shortcut=shortcut), images, norm, target="tensorrt", method="minmax")
    records = extract_qparams(converted)
    activations = [r for r in records if r["kind"] == "activation"]
    weights = [r for r in records if r["kind"] == "weight"]
    assert activations and weights
    for record in records:
        assert record["dtype"] == "int8"
        zero_points = record["zero_point"] if isinstance(record["zero_point"], list) else [record["zero_point"]]
        assert set(zero_points) == {0}, record
    for record in weights:
        assert record["axis"] == 0 and record["granularity"] == "per-channel"
        assert (record["quant_min"], record["quant_max"]) == (-127, 127)
    for record in activations:
        assert (record["quant_min"], record["quant_max"]) == (-128, 127)
    layers_with_weights = {c for r in weights for c in r["consumers"]}
    expected = {"conv1", "fc"} | {f"layers.{s}.{b}.conv{i}" for s in range(3) for b in range(3) for i in (1, 2)}
    assert expected <= layers_with_weights  # every conv and the FC
    if shortcut == "B":
        assert any("shortcut" in name for name in layers_with_weights)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_every_conv_linear_and_residual_add_reads_quantized_inputs(tiny_data, target):
    images, norm = tiny_data
    converted = _convert(create_model("resnet20"), images, norm, target=target, method="minmax")
    aten = torch.ops.aten
    adds = convs = 0
    for node in converted.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in (aten.conv2d.default, aten.linear.default):
            convs += 1
            assert node.args[0].target in DEQUANT_TENSOR, f"{node.name} reads a float activation"
            weight = node.args[1]
            assert weight.target in DEQUANT_CHANNEL and weight.args[3] == 0, f"{node.name} weight is not per-channel axis 0"
        if node.target == aten.add.Tensor:
            adds += 1
            for arg in node.args[:2]:
                assert arg.target in DEQUANT_TENSOR, f"{node.name} input {arg.name} is not quantized"
        if node.target == aten.relu.default:
            # conv+BN+ReLU fuse: nothing is quantized between a conv and its ReLU.
            assert node.args[0].target not in DEQUANT_TENSOR
    assert convs == 20 and adds == 9


def test_cpu_scheme_is_u8_activations_s8_weights(tiny_data):
    images, norm = tiny_data
    records = extract_qparams(_convert(create_model("resnet20"), images, norm, target="cpu", method="minmax"))
    assert {r["dtype"] for r in records if r["kind"] == "activation"} == {"uint8"}
    assert {r["dtype"] for r in records if r["kind"] == "weight"} == {"int8"}
    assert all(set(r["zero_point"]) == {0} for r in records if r["kind"] == "weight")
    post_relu = [r for r in records if r["kind"] == "activation" and r["tensor"].startswith("relu")]
    assert post_relu and all(r["zero_point"] == 0 for r in post_relu)  # non-negative: the full 0..255 grid


def test_option_a_shortcut_shares_the_scale_of_the_tensor_it_slices(tiny_data):
    images, norm = tiny_data
    records = extract_qparams(_convert(create_model("resnet20"), images, norm, target="tensorrt", method="mse"))
    by_tensor = {r["tensor"]: r for r in records if r["kind"] == "activation"}
    pads = [r for r in records if r["kind"] == "activation" and r["tensor"].startswith("pad")]
    assert len(pads) == 2
    # pad(slice(relu_6)) feeds add_3 with relu_6's scale: the zero-padded shortcut adds no rounding.
    assert pads[0]["scale"] == by_tensor["relu_6"]["scale"]


def test_keep_float_leaves_first_conv_and_last_fc_unquantized(tiny_data):
    images, norm = tiny_data
    converted = _convert(create_model("resnet20"), images, norm, target="tensorrt", method="minmax", keep_float=["conv1", "fc"])
    aten = torch.ops.aten
    nodes = {n.name: n for n in converted.graph.nodes}
    assert nodes["conv2d"].args[0].op == "placeholder" and nodes["conv2d"].args[1].target not in DEQUANT_CHANNEL
    assert nodes["linear"].args[0].target not in DEQUANT_TENSOR
    assert nodes["conv2d_1"].args[0].target in DEQUANT_TENSOR  # neighbours stay int8
    assert sum(n.target in (aten.conv2d.default,) and n.args[1].target in DEQUANT_CHANNEL for n in converted.graph.nodes) == 18


def test_unknown_keep_float_layer_is_a_user_error(trained_checkpoint_synthetic, synthetic, tmp_path):
    from resnet_deploy.checkpoint import load_checkpoint

    with pytest.raises(UserError, match="no layer named 'layer9.conv'.*first, last, conv1"):
        quantize_ptq(load_checkpoint(trained_checkpoint_synthetic), synthetic, tmp_path, keep_float=["layer9.conv"], calib_size=32)


# ----------------------------------------------------------------------------------------- calibration


def _observer(method, target="tensorrt", percentile=99.99):
    scheme = scheme_for(target)
    return histogram_observer_class()(
        method=method, percentile=percentile, dtype=scheme.activation_dtype, qscheme=scheme.activation_qscheme,
        quant_min=scheme.activation_range[0], quant_max=scheme.activation_range[1],
    )


def _heavy_tailed(seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    values[torch.randperm(len(values), generator=generator)[:5]] = torch.tensor([40.0, -35.0, 30.0, 25.0, 22.0])
    return values


def test_histogram_is_exact_when_later_batches_widen_the_range():
    observer = _observer("percentile")
    data = _heavy_tailed()
    for chunk in torch.tensor_split(torch.sort(data.abs())[0], 7):  # increasing ranges: forces widening
        observer(chunk)
    histogram = observer.histogram
    assert histogram.total == len(data) == pytest.approx(histogram.counts.sum())
    for q in (0.5, 0.9, 0.999):
        assert histogram.quantile(q) == pytest.approx(torch.quantile(data.abs()[:100_000], q).item(), rel=0.05)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_clipping_methods_clip_outliers_and_mse_minimises_the_error(target):
    data = _heavy_tailed()
    ranges, errors = {}, {}
    for method in ("minmax", "percentile", "entropy", "mse"):
        observer = _observer(method, target)
        for chunk in torch.tensor_split(data, 5):
            observer(chunk)
        ranges[method] = observer.chosen_range()
        scale, zero_point = observer.calculate_qparams()
        assert torch.isfinite(scale).all() and scale.item() > 0
        if target == "tensorrt":
            assert zero_point.item() == 0
        rounded = torch.fake_quantize_per_tensor_affine(data, scale.item(), int(zero_point.item()), observer.quant_min, observer.quant_max)
        errors[method] = ((rounded - data) ** 2).mean().item()
    assert ranges["minmax"] == (pytest.approx(-35.0), pytest.approx(40.0))
    assert ranges["percentile"][1] == pytest.approx(torch.quantile(data.abs(), 0.9999).item() if target == "tensorrt" else torch.quantile(data, 0.9999).item(), rel=0.05)
    for method in ("percentile", "entropy"):
        low, high = ranges[method]
        assert 3.0 < high < 20.0 and -20.0 < low < 0.0, (method, ranges[method])  # Laplace(1): the bulk is within ~10
    # The MSE search minimises the error it is named after (measured, not modelled, here).
    assert errors["mse"] <= min(errors.values()) * 1.02, errors


def test_relu_like_tensors_keep_zero_exact_under_every_method():
    values = torch.relu(torch.randn(100_000))
    for method in ("percentile", "entropy", "mse"):
        observer = _observer(method, "cpu")
        observer(values)
        _, zero_point = observer.calculate_qparams()
        assert zero_point.item() == 0  # [0, max]: the uint8 grid starts at 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_every_calibration_method_runs_and_tracks_fp32(synthetic, method, target):
    model = create_model("resnet20").eval()
    converted = _convert(model, synthetic.train_images[:96], synthetic.normalization, target=target, method=method)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference, quantized = model(x), converted(x)
    assert torch.isfinite(quantized).all()
    assert torch.nn.functional.cosine_similarity(reference.flatten(), quantized.flatten(), dim=0) > 0.95


# ----------------------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def trained_checkpoint_synthetic(synthetic_checkpoint):
    return synthetic_checkpoint


@pytest.fixture(scope="module")
def synthetic_artifact(trained_checkpoint_synthetic, synthetic, tmp_path_factory):
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import run_ptq

    folder = tmp_path_factory.mktemp("int8") / "synthetic-tensorrt"
    quantized = run_ptq(load_checkpoint(trained_checkpoint_synthetic), synthetic, folder, calib_size=128, method="percentile")
    return folder, quantized


def test_save_load_round_trip_is_exact(synthetic_artifact, trained_checkpoint_synthetic):
    folder, in_memory = synthetic_artifact
    loaded = load_quantized(folder, checkpoint=trained_checkpoint_synthetic)
    x = torch.randn(7, 3, 32, 32)  # a batch size never seen: the batch dimension is dynamic
    assert torch.equal(loaded.module(x), in_memory.module(x))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "resnet-deploy/quantized" and manifest["target"] == loaded.target == "tensorrt"
    assert loaded.checkpoint_sha256 == manifest["checkpoint"]["sha256"]
    assert loaded.metrics["int8"]["top1"] == manifest["metrics"]["int8"]["top1"]
    qparams = json.loads((folder / "qparams.json").read_text())["tensors"]
    assert len(qparams) == manifest["qparams_summary"]["activations"] + manifest["qparams_summary"]["weights"] == 51


def test_without_torchao_quantizing_says_how_to_install_it_and_loading_still_works(synthetic_artifact, monkeypatch):
    """One registration of the quantize ops (quantize.artifact.register_quant_ops): quantizing needs
    torchao and names the install command; loading a saved artifact needs only the ops, which torch's own
    op library defines."""
    from resnet_deploy.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)  # import fails: torchao "missing"
    with pytest.raises(MissingDependencyError, match="pip install 'torchao"):
        ptq_convert(torch.nn.Identity(), np.zeros((1, 32, 32, 3), np.uint8), None)
    folder, in_memory = synthetic_artifact
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(load_quantized(folder).module(x), in_memory.module(x))


def test_loaded_module_exports_to_onnx_with_dynamic_batch(synthetic_artifact, tmp_path):
    onnx = pytest.importorskip("onnx")
    folder, _ = synthetic_artifact
    loaded = load_quantized(folder)
    program = torch.onnx.export(
        loaded.module, (torch.randn(2, 3, 32, 32),), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    program.save(str(tmp_path / "int8.onnx"))
    model = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def test_checkpoint_mismatch_is_refused(synthetic_artifact, tmp_path):
    folder, _ = synthetic_artifact
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the checkpoint that was calibrated")
    with pytest.raises(UserError, match="different checkpoint"):
        load_quantized(folder, checkpoint=other)
    result = CliRunner().invoke(main, ["quantize-info", str(folder), "--checkpoint", str(other)])
    assert result.exit_code == 2 and "different checkpoint" in result.output


def test_corrupted_artifact_is_refused_before_deserialising(synthetic_artifact, tmp_path):
    import shutil

    folder, _ = synthetic_artifact
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    data = bytearray((broken / "program.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "program.pt2").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt or was modified"):
        load_quantized(broken)
    result = CliRunner().invoke(main, ["quantize-info", str(broken)])
    assert result.exit_code == 2 and "corrupt or was modified" in result.output
    (broken / "manifest.json").write_text("{ truncated")
    result = CliRunner().invoke(main, ["quantize-info", str(broken)])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    result = CliRunner().invoke(main, ["quantize-info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output


def test_quantize_info_reports_a_good_artifact(synthetic_artifact, trained_checkpoint_synthetic):
    folder, _ = synthetic_artifact
    result = CliRunner().invoke(main, ["quantize-info", str(folder), "--checkpoint", str(trained_checkpoint_synthetic)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["target"] == "tensorrt" and info["qparams"]["nonzero_zero_points"] == 0


def test_cpu_int8_callable_matches_the_reference_model(synthetic_artifact):
    pytest.importorskip("torch._inductor")
    folder, _ = synthetic_artifact
    loaded = load_quantized(folder)
    fast = loaded.int8_cpu_callable()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        reference = loaded.module(x)
    got = fast(x)
    # oneDNN requantizes with its own rounding: close, not bit-identical.
    assert torch.nn.functional.cosine_similarity(reference.flatten(), got.flatten(), dim=0) > 0.99
    assert (got.argmax(1) == reference.argmax(1)).float().mean() >= 0.9


# ----------------------------------------------------------------------------------------- CLI


def test_cli_quantize_writes_artifact_and_rejects_bad_options(trained_checkpoint_synthetic, tmp_path):
    runner = CliRunner()
    output = tmp_path / "cli-artifact"
    result = runner.invoke(
        main, ["-q", "quantize", str(trained_checkpoint_synthetic), "--dataset", "synthetic", "--calib-size", "64",
               "--method", "minmax", "--target", "cpu", "-o", str(output)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["target"] == "cpu" and (output / "manifest.json").is_file()
    bad = runner.invoke(main, ["quantize", str(trained_checkpoint_synthetic), "--dataset", "synthetic", "--calib-size", "999999", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--calib-size" in bad.output
    bad = runner.invoke(main, ["quantize", str(trained_checkpoint_synthetic), "--dataset", "synthetic", "--keep-float", "nope", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--keep-float" in bad.output
    bad = runner.invoke(main, ["quantize", str(tmp_path / "missing.pt"), "--dataset", "synthetic"])
    assert bad.exit_code == 2


# ----------------------------------------------------------------------------------------- accuracy (real data)


@pytest.mark.slow
def test_ptq_keeps_top1_agreement_with_fp32_on_cifar10(ptq_resnet20):
    """The session's PTQ of the CIFAR-10 ResNet20 (conftest.ptq_resnet20: 500 calibration images)."""
    for target in ("tensorrt", "cpu"):
        _, metrics = ptq_resnet20[target]
        assert metrics["test_images"] == 1000
        assert metrics["fp32"]["top1"] > 30  # the fixture learned something
        assert metrics["agreement_top1"] > 95.0, (target, metrics["agreement_top1"])
        assert abs(metrics["delta_top1"]) < 2.0


@pytest.mark.slow
def test_qat_runs_keeps_accuracy_and_resumes(trained_resnet20, cifar10_small, tmp_path):
    from resnet_deploy.checkpoint import load_checkpoint

    loaded = load_checkpoint(trained_resnet20)
    data = cifar10_small.subset(1500, None)
    common = dict(calib_size=256, lr=2e-3, batch_size=100, freeze_bn_epoch=1, freeze_observers_epoch=1)
    first = quantize_qat(loaded, data, tmp_path / "qat", epochs=1, **common)
    assert len(first["timings"]) and first["test_images"] == 1000
    resumed = quantize_qat(loaded, data, tmp_path / "qat", epochs=2, resume=True, **common)
    manifest = json.loads((tmp_path / "qat" / "manifest.json").read_text())
    history = manifest["qat"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["bn_frozen"] and history[1]["observers_frozen"]
    assert resumed["int8"]["top1"] >= resumed["fp32"]["top1"] - 1.0  # fine-tuned int8 keeps FP32 accuracy
    with pytest.raises(UserError, match="another checkpoint"):
        other = load_checkpoint(trained_resnet20)
        other.sha256 = "0" * 64
        quantize_qat(other, data, tmp_path / "qat", epochs=3, resume=True, **common)


@pytest.mark.slow
def test_sensitivity_ranks_every_layer_and_verifies_its_plan(trained_resnet20, cifar10_small, tmp_path):
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import sensitivity_analysis

    report = sensitivity_analysis(
        load_checkpoint(trained_resnet20), cifar10_small, tmp_path / "sensitivity.json", calib_size=256, eval_images=500,
        method="minmax", max_float_layers=2,
    )
    assert len(report["layers"]) == 20 and [row["rank"] for row in report["layers"]] == list(range(1, 21))
    losses = [row["loss_top1"] for row in report["layers"]]
    assert losses == sorted(losses, reverse=True)
    assert len(report["plan"]["keep_float"]) <= 2
    assert json.loads((tmp_path / "sensitivity.json").read_text())["mode"] == "only"
    assert np.isfinite(report["all_int8"]["top1"])


# ----------------------------------------------------------------------------------------- bias correction


@pytest.mark.parametrize("mode", ["own", "sequential"])
def test_bias_correction_recentres_layer_outputs(trained_checkpoint_synthetic, synthetic, mode):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import bias_correction as bc
    from resnet_deploy.quantize.calibration import run_calibration
    from resnet_deploy.quantize.capture import capture
    from resnet_deploy.quantize.quantizer import build_quantizer

    loaded = load_checkpoint(trained_checkpoint_synthetic)
    images = synthetic.train_images[:128]
    prepared = prepare_pt2e(capture(loaded.model), build_quantizer(scheme_for("tensorrt"), "minmax", 99.99, ()))
    run_calibration(prepared, images, synthetic.normalization)
    converted = convert_pt2e(prepared, fold_quantize=False)
    layers = bc._quantized_layers(converted)
    assert len(layers) == 20
    from resnet_deploy.data import normalize, to_tensor_images

    batch = normalize(to_tensor_images(images), synthetic.normalization)

    def last_layer_mean(float_twin: bool) -> torch.Tensor:
        recorder = bc._MeanRecorder(converted, layers[-1:], float_twin=float_twin)
        with torch.no_grad():
            recorder.run(batch)
        return recorder.means()[0]

    fp32_logits_mean = last_layer_mean(True)  # before any bias changes: the FP32 network's

    def last_layer_shift() -> float:
        return float((last_layer_mean(False) - fp32_logits_mean).abs().mean())

    before = last_layer_shift()
    original_biases = [bc._attr(converted, str(node.args[2].target)).detach().clone() for node in layers]
    own_errors = bc._OwnErrorRecorder(converted, layers)
    with torch.no_grad():
        own_errors.run(batch)
    report = bc.correct_bias(converted, images, synthetic.normalization, mode=mode)
    assert report["layers"] == 20 and all(np.isfinite(v) for v in report["mean_abs_shift"].values())
    after = last_layer_shift()
    if mode == "own":  # each layer's bias absorbed the mean error it adds by itself
        for node, original, own in zip(layers, original_biases, own_errors.means()):
            corrected = bc._attr(converted, str(node.args[2].target))
            assert torch.allclose(corrected, original - own.float(), atol=1e-6)
    else:
        # Equal up to float rounding (a shifted output and a recomputed one can round to different
        # int8 values downstream, more or less often with the thread count): 20x closer than before
        # (measured 38x with one thread, more with two).
        assert after < 0.05 * before
    bc.fold_weight_quantization(converted)
    assert not any(n.target == torch.ops.quantized_decomposed.quantize_per_channel.default for n in converted.graph.nodes)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_biases_land_on_the_int32_grid(trained_checkpoint_synthetic, synthetic, target):
    """After PTQ every quantized layer's float bias is a whole multiple of x_scale * w_scale[c], the
    unit of the int32 accumulator that ONNX Runtime rounds a bias to: one model for every backend."""
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import bias_correction as bc
    from resnet_deploy.quantize.ptq import ptq_convert

    loaded = load_checkpoint(trained_checkpoint_synthetic)
    converted, timings = ptq_convert(
        loaded.model, synthetic.train_images[:128], synthetic.normalization, target=target, method="minmax", bias_correction=True
    )
    layers = bc._quantized_layers(converted)
    assert timings["bias_grid"]["layers"] == len(layers) == 20
    for node in layers:
        step = bc._scalar_or_tensor(converted, node.args[0].args[1]) * bc._scalar_or_tensor(converted, node.args[1].args[1])
        units = bc._attr(converted, str(node.args[2].target)).double() / step
        assert torch.allclose(units, units.round(), atol=1e-3), node.name
    # and the snap moved no bias by more than half a unit
    assert timings["bias_grid"]["max_abs_change"] <= 0.5 * float(max(
        (bc._scalar_or_tensor(converted, n.args[0].args[1]) * bc._scalar_or_tensor(converted, n.args[1].args[1])).max() for n in layers
    )) + 1e-9
