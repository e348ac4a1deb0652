"""``resnet-deploy inspect``: the layer map, the per-layer comparison, planted faults it must name, the
exposure of ONNX Runtime's intermediate tensors (bit-exact logits), and the Q/DQ lint against TensorRT.

The model is a ResNet20 with random weights whose BatchNorm statistics are set on synthetic images (a
few forward passes, no training: seconds), quantized with minmax on 128 images. Per-layer figures do
not need an accurate model, only a real int8 program and its ONNX export.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from resnet_deploy.checkpoint import load_checkpoint, save_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.data import normalized_batches
from resnet_deploy.errors import UserError
from resnet_deploy.export import tensorrt as trt_lib
from resnet_deploy.tensorrt import runtime as trt_runtime
from resnet_deploy.inspect import InspectOptions, OnnxGraph, inspect_int8, lint_report
from resnet_deploy.inspect.layers import build_layer_map
from resnet_deploy.inspect.lint import lint_graph
from resnet_deploy.inspect.metrics import Agreement
from resnet_deploy.inspect.taps import Observation
from resnet_deploy.models import create_model, normalize_spec

pytest.importorskip("torchao")

IMAGES = 16
RESNET20_LAYERS = ["input", "conv1"] + [f"layers.{s}.{b}.{part}" for s in range(3) for b in range(3)
                                        for part in ("conv1", "conv2", "add")] + ["fc"]
needs_tensorrt = pytest.mark.tensorrt  # skipped without TensorRT; failed instead in CI when the tensorrt extra is installed


# --------------------------------------------------------------------------------------------- fixtures


def _checkpoint(name: str, dataset, path) -> None:
    """A model with BatchNorm statistics of ``dataset`` (train-mode forward passes, no training)."""
    torch.manual_seed(0)
    model = create_model(name, len(dataset.classes))
    model.train()
    with torch.no_grad():
        for batch in normalized_batches(dataset.train_images[:512], dataset.normalization, 128):
            model(batch)
    save_checkpoint(path, {"model": normalize_spec(name, len(dataset.classes)).to_dict(), "state_dict": model.state_dict(),
                           "normalization": dataset.normalization.to_dict(),
                           "dataset": {"name": dataset.name, "classes": dataset.classes}})


@pytest.fixture(scope="module")
def int8_model(synthetic, tmp_path_factory):
    from resnet_deploy.quantize import quantize_ptq

    folder = tmp_path_factory.mktemp("inspect")
    _checkpoint("resnet20", synthetic, folder / "model.pt")
    quantize_ptq(load_checkpoint(folder / "model.pt"), synthetic, folder / "int8", target="tensorrt", method="minmax",
                 calib_size=128, bias_correction=False, evaluate=False)
    return folder


@pytest.fixture(scope="module")
def clean_run(int8_model):
    """``resnet-deploy inspect`` through the CLI: it exports the int8 ONNX into -o itself."""
    out = int8_model / "clean"
    result = CliRunner().invoke(main, ["inspect", str(int8_model / "model.pt"), "--int8", str(int8_model / "int8"),
                                       "--dataset", "synthetic", "-o", str(out), "--images", str(IMAGES),
                                       "--batch-size", str(IMAGES), "--lint"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "inspect.json").read_text()), result.output


def _layer(record: dict, name: str) -> dict:
    return next(layer for layer in record["layers"] if layer["name"] == name)


# --------------------------------------------------------------------------------------------- faults


def _nodes(model) -> dict:
    return {node.name: node for node in model.graph.node}


def _producer(model, tensor: str):
    return next((node for node in model.graph.node if tensor in node.output), None)


def _initializer(model, name: str):
    return next(init for init in model.graph.initializer if init.name == name)


def corrupt_output_scale(model, quantize_name: str, factor: float) -> None:
    """Give one QuantizeLinear (and the DequantizeLinear nodes reading it) a wrong scale."""
    quantize = _nodes(model)[quantize_name]
    scale = numpy_helper.to_array(_initializer(model, quantize.input[1])) * np.float32(factor)
    model.graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), f"{quantize_name}_corrupted_scale"))
    for node in model.graph.node:
        if node is quantize or (node.op_type == "DequantizeLinear" and node.input[0] == quantize.output[0]):
            node.input[1] = f"{quantize_name}_corrupted_scale"


def move_bias(model, conv_name: str, output_steps: float) -> None:
    """Move one convolution's bias by ``output_steps`` of its output's int8 step, off the int32 grid."""
    conv = _nodes(model)[conv_name]
    quantize = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    x_dq, w_dq = _producer(model, conv.input[0]), _producer(model, conv.input[1])
    step = np.float64(values[x_dq.input[1]]) * values[w_dq.input[1]].astype(np.float64)
    units = np.round(output_steps * np.float64(values[quantize.input[1]]) / step) + 0.4  # 0.4: off the grid
    bias = values[conv.input[2]].astype(np.float64) + units * step
    _initializer(model, conv.input[2]).CopyFrom(numpy_helper.from_array(bias.astype(np.float32), conv.input[2]))


def drop_residual_qdq(model, add_name: str) -> None:
    """Feed one residual Add its identity input in float: the Q/DQ pair on that input is gone."""
    add = _nodes(model)[add_name]
    for index, tensor in enumerate(add.input):
        quantize = _producer(model, _producer(model, tensor).input[0])
        if _producer(model, quantize.input[0]).op_type == "Relu":
            add.input[index] = quantize.input[0]
            return
    raise AssertionError(f"{add_name} has no identity input")


def with_fault(source, target, plant, *args):
    model = onnx.load(str(source))
    plant(model, *args)
    onnx.save(model, str(target))
    return target


# --------------------------------------------------------------------------------------------- layer map


def test_one_name_per_layer_across_implementations(clean_run):
    out, record, _ = clean_run
    assert [layer["name"] for layer in record["layers"]] == RESNET20_LAYERS
    model = onnx.load(record["onnx"]["path"])
    nodes = _nodes(model)
    for layer in record["layers"]:
        onnx_nodes = layer["onnx"]["nodes"]
        assert layer["pytorch"]["node"] and layer["pytorch"]["output"] and layer["pytorch"]["fp32_output"]
        assert layer["tensorrt"]["predicted"]["onnx_nodes"]
        if layer["kind"] == "conv":
            # the exporter names each folded bias after its module: an oracle independent of the structural match
            assert nodes[onnx_nodes[0]].op_type == "Conv" and nodes[onnx_nodes[0]].input[2].startswith(layer["name"] + ".")
        if layer["kind"] != "fc":
            assert nodes[onnx_nodes[-1]].op_type == "QuantizeLinear" or layer["name"] == "layers.2.2.add"  # before the pool
    assert _layer(record, "layers.0.0.add")["inputs"] == ["layers.0.0.conv2", "conv1"]


def test_layer_map_refuses_an_onnx_of_another_model(int8_model, clean_run):
    from resnet_deploy.quantize import load_quantized
    from resnet_deploy.quantize.capture import capture

    _, record, _ = clean_run
    model = onnx.load(record["onnx"]["path"])
    conv = _nodes(model)["node_conv2d_1"]
    weight = _initializer(model, _producer(model, conv.input[1]).input[0])
    weight.CopyFrom(numpy_helper.from_array(np.zeros((8, 16, 3, 3), np.int8), weight.name))  # another layer's shape
    quantized = load_quantized(int8_model / "int8")
    with pytest.raises(UserError, match="node_conv2d_1.*no counterpart"):
        build_layer_map(quantized.module, capture(load_checkpoint(int8_model / "model.pt").model), OnnxGraph(model))


# --------------------------------------------------------------------------------------------- the comparison


def test_record_has_every_figure(clean_run):
    out, record, output = clean_run
    assert record["format"] == "resnet-deploy/inspect" and record["images"]["count"] == IMAGES
    for layer in record["layers"]:
        assert set(layer["sqnr_db"]) == {"pytorch-int8", "onnxruntime"}
        for figures in layer["vs_fp32"].values():
            assert figures["sqnr_db"] is not None and 0 < figures["sqnr_db"] < 100 and 0.9 < figures["cosine"] <= 1.0
    first, last = _layer(record, "conv1")["sqnr_db"]["pytorch-int8"], _layer(record, "fc")["sqnr_db"]["pytorch-int8"]
    assert first > last  # quantization errors accumulate through the network
    assert record["rankings"]["quantization_loss"] and all(r["suggestion"] for r in record["rankings"]["quantization_loss"])
    assert (out / "inspect.md").read_text().count("## ") >= 5
    assert (out / "sqnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layers losing most against FP32" in output and "Q/DQ lint" in output


def test_onnx_runtime_taps_change_nothing(clean_run):
    """The layer outputs come from ONNX Runtime's own optimised graph: same kernels, bit-exact logits."""
    _, record, _ = clean_run
    ort = record["implementations"]["onnxruntime"]
    assert ort["exposure"]["logits_bit_exact"] and ort["exposure"]["fused_away"] == []
    assert ort["exposure"]["kernels"].get("QLinearConv", 0) > 0  # the fused int8 kernels were observed, not bypassed
    naive = ort["naive_exposure"]  # adding outputs to the original graph: recorded with its effect
    assert naive["fusions_unchanged"] == (naive["kernels_before"] == naive["kernels_after"])


def test_taps_know_onnx_runtimes_layouts(clean_run):
    """ONNX Runtime runs QLinearConv channels-last between Transposes: the tensor a QLinearConv reads is
    NHWC, and every tap (read where the Transpose back has made it NCHW) is NCHW."""
    from resnet_deploy.export.qdq import ort_optimized_model
    from resnet_deploy.inspect.ort_taps import _channels_last, locate

    _, record, _ = clean_run
    original = OnnxGraph(onnx.load(record["onnx"]["path"]))
    optimised = OnnxGraph(ort_optimized_model(record["onnx"]["path"], "all"))
    qlinear = [node for node in optimised.nodes if node.op_type == "QLinearConv"]
    assert qlinear and all(_channels_last(optimised, node.input[0]) for node in qlinear)
    from resnet_deploy.inspect.layers import Layer

    for entry in record["layers"]:
        layer = Layer(entry["name"], entry["kind"], entry["inputs"], "", "", "", entry["onnx"]["nodes"], entry["onnx"]["output"])
        tap = locate(original, optimised, layer)
        assert tap is not None and not tap.channels_last, entry["name"]


def test_clean_export_diverges_only_by_rounding(clean_run):
    _, record, _ = clean_run
    for layer in record["layers"]:
        local = layer["between"]["pytorch-int8~onnxruntime"]["local"]
        assert local["mismatch_fraction"] < (0.02 if layer["name"] == "input" else 1e-3), layer["name"]
    sizes = record["batch_sizes"]["onnxruntime"]
    assert sizes["batch_1_vs_max"]["top1_agreement"] == 100.0 and sizes["max_batch"] >= IMAGES


def test_tensorrt_recorded_as_not_runnable_without_gpu(clean_run):
    _, record, _ = clean_run
    if trt_lib.current_gpu() is not None:
        pytest.skip("a GPU is present: TensorRT ran")
    assert record["implementations"]["tensorrt"]["ran"] is False
    assert "not runnable here" in record["implementations"]["tensorrt"]["reason"]


def test_planted_faults_are_named(int8_model, clean_run, synthetic, tmp_path):
    """A corrupted scale, a moved bias and a missing residual Q/DQ, each in one layer of the ONNX: the
    divergence ranking names exactly those three layers, each with its cause."""
    _, record, _ = clean_run
    by_name = {layer["name"]: layer["onnx"]["nodes"] for layer in record["layers"]}
    source = record["onnx"]["path"]
    faulty = with_fault(source, tmp_path / "scale.onnx", corrupt_output_scale, by_name["layers.0.1.conv1"][-1], 1.3)
    faulty = with_fault(faulty, tmp_path / "bias.onnx", move_bias, by_name["layers.1.1.conv2"][0], 0.3)
    faulty = with_fault(faulty, tmp_path / "faults.onnx", drop_residual_qdq, by_name["layers.2.1.add"][0])
    result = inspect_int8(InspectOptions(checkpoint=int8_model / "model.pt", int8_dir=int8_model / "int8", dataset=synthetic,
                                         output_dir=tmp_path / "out", onnx_path=faulty, images=IMAGES, batch_size=IMAGES))
    ranking = result["rankings"]["divergence"]["onnxruntime"]
    top = {entry["name"]: entry["diagnosis"] for entry in ranking[:3]}
    assert set(top) == {"layers.0.1.conv1", "layers.1.1.conv2", "layers.2.1.add"}, ranking
    assert "output scale" in top["layers.0.1.conv1"]
    assert "bias differs" in top["layers.1.1.conv2"] and "off the int32 grid" in top["layers.1.1.conv2"]
    assert "missing" in top["layers.2.1.add"]
    lint = {row["layer"]: row for row in result["lint"]["rows"]}
    assert lint["layers.2.1.add"]["precision"] == "float" and "missing" in lint["layers.2.1.add"]["reasons"][0]


# --------------------------------------------------------------------------------------------- metrics


def test_agreement_figures():
    reference = Observation(torch.tensor([1.0, -2.0, 3.0, 0.0]))
    same = Agreement()
    same.add(reference, Observation(torch.tensor([1, -2, 3, 0], dtype=torch.int8), 1.0, 0, (-128, 127)))
    assert same.summary()["identical"] and same.summary()["sqnr_db"] is None and same.summary()["mismatch_fraction"] == 0
    noisy = Agreement()
    noisy.add(reference, Observation(torch.tensor([1, -2, 2, 0], dtype=torch.int8), 1.0, 0, (-128, 2)))
    figures = noisy.summary()
    assert figures["sqnr_db"] == pytest.approx(10 * np.log10(14.0 / 1.0))
    assert figures["mismatch_fraction"] == 0.25 and figures["clipped_fraction"] == 0.25 and figures["max_abs_error"] == 1.0


# --------------------------------------------------------------------------------------------- lint


def test_lint_predicts_what_tensorrt_builds(clean_run):
    _, record, _ = clean_run
    rows = {row["layer"]: row for row in record["lint"]["rows"]}
    assert len(rows) == len(RESNET20_LAYERS) - 1  # every Conv, the Gemm and every Add; the input is no layer here
    assert all(row["precision"] == "int8" for row in rows.values())
    assert rows["layers.0.0.conv1"]["pattern"] == "conv+bias+ReLU (int8 output)"
    # the quantizer re-quantizes every block's conv2 output before its Add: TensorRT's docs say that pair
    # keeps the conv and the Add apart, so each Add is its own layer
    assert rows["layers.0.0.add"]["blocked_by"] and not rows["layers.0.0.add"]["fused_into"]
    assert record["lint"]["summary"]["fusions_blocked_by_qdq"] == 9


def test_lint_fuses_a_directly_fed_residual_add(clean_run):
    """The placement TensorRT recommends (conv output straight into the Add, residual input quantized)
    is predicted as one conv+bias+residual Add+ReLU layer with an int8 output."""
    _, record, _ = clean_run
    model = onnx.load(record["onnx"]["path"])
    add = _nodes(model)["node_add_70"]
    dequantize = _producer(model, add.input[0])
    quantize = _producer(model, dequantize.input[0])
    add.input[0] = quantize.input[0]  # conv2's output straight into the Add: its Q/DQ pair is gone
    for node in (dequantize, quantize):
        model.graph.node.remove(node)
    rows = {row.node: row for row in lint_graph(OnnxGraph(model))}
    assert rows["node_add_70"].fused_into == "node_conv2d_2"
    assert rows["node_conv2d_2"].pattern == "conv+bias+residual Add+ReLU (int8 output)"
    assert rows["node_conv2d_2"].group == ["node_conv2d_2", "node_add_70", "node_relu_2", "node_quantize_per_tensor_4"]


def _faulty_onnx(kind: str, source, target):
    if kind == "clean":
        return source
    model = onnx.load(str(source))
    if kind == "missing residual Q/DQ":
        drop_residual_qdq(model, "node_add_547")
    elif kind == "non-zero zero-point":
        quantize = _nodes(model)["node_quantize_per_tensor_5"]
        model.graph.initializer.append(numpy_helper.from_array(np.array(3, np.int8), "nonzero_zp"))
        for node in model.graph.node:
            if node is quantize or (node.op_type == "DequantizeLinear" and node.input[0] == quantize.output[0]):
                node.input[2] = "nonzero_zp"
    onnx.save(model, str(target))
    return target


@needs_tensorrt
@pytest.mark.parametrize("kind", ["clean", "missing residual Q/DQ", "non-zero zero-point"])
def test_lint_agrees_with_the_tensorrt_builder(clean_run, kind, tmp_path):
    _, record, _ = clean_run
    path = _faulty_onnx(kind, record["onnx"]["path"], tmp_path / "graph.onnx")
    report = lint_report(OnnxGraph(onnx.load(str(path))), path, compute_capability="8.6")
    assert report["builder"]["ran"] and report["builder"]["agree"], report["builder"]
    not_int8 = {entry["node"] for entry in report["summary"]["not_int8"]}
    assert not_int8 == {"clean": set(), "missing residual Q/DQ": {"node_add_547"},
                        "non-zero zero-point": {"node_conv2d_4"}}[kind]


@needs_tensorrt
@pytest.mark.skipif(not os.environ.get("RESNET_DEPLOY_TEST_BIG_MODELS"), reason="set RESNET_DEPLOY_TEST_BIG_MODELS=1 (minutes on 2 cores)")
@pytest.mark.parametrize("name", ["resnet56", "resnet50"])
def test_lint_agrees_with_the_builder_on_bigger_models(name, synthetic, tmp_path):
    from resnet_deploy.export.onnx_export import ExportInfo, export_onnx
    from resnet_deploy.quantize import quantize_ptq

    _checkpoint(name, synthetic, tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt")
    quantize_ptq(loaded, synthetic, tmp_path / "int8", target="tensorrt", method="minmax", calib_size=16,
                 bias_correction=False, evaluate=False)
    from resnet_deploy.quantize import load_quantized

    quantized = load_quantized(tmp_path / "int8")
    path = tmp_path / "model.onnx"
    export_onnx(quantized.module, path, ExportInfo(quantized.spec.to_dict(), quantized.normalization.to_dict(),
                                                   list(quantized.classes), loaded.sha256, "int8", "tensorrt"))
    report = lint_report(OnnxGraph(onnx.load(str(path))), path, compute_capability="8.6")
    assert report["builder"]["agree"], report["builder"]["disagreements"]


@needs_tensorrt
def test_export_lints_before_building_an_int8_engine(clean_run, tmp_path, monkeypatch):
    import shutil

    from resnet_deploy.export.run import ExportOptions, _build_engines

    _, record, _ = clean_run
    shutil.copy(record["onnx"]["path"], tmp_path / "model-int8-tensorrt.onnx")
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda: None)
    manifest = {"artifacts": [{"kind": "onnx", "precision": "int8", "scheme": "tensorrt", "path": "model-int8-tensorrt.onnx",
                               "parity": {"passed": True}}], "skipped": []}
    options = ExportOptions(checkpoint=tmp_path / "unused.pt", output_dir=tmp_path, min_batch=1, opt_batch=1, max_batch=2)
    _build_engines(options, manifest, tmp_path, {"compute_capability": "8.6"})
    lint = manifest["artifacts"][0]["qdq_lint"]
    assert lint["layers"] == len(RESNET20_LAYERS) - 1 and lint["fusions_blocked_by_qdq"] == 9
    assert manifest["artifacts"][1]["kind"] == "tensorrt"


def test_lint_only_cli(clean_run):
    _, record, _ = clean_run
    result = CliRunner().invoke(main, ["inspect", "--lint", "--onnx", record["onnx"]["path"], "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["summary"]["layers"] == len(RESNET20_LAYERS) - 1
    missing = CliRunner().invoke(main, ["inspect", "--lint"])
    assert missing.exit_code == 2 and "--onnx" in missing.output
