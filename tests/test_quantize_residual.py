"""``residual_conv_input``: where the quantizer leaves a residual Add's convolution-side input in float
(issue #14, OpenVINO CPU exactness), the default placement unchanged, the choice carried by the
artifact manifest (older manifests read as "int8") and accepted by the export's Q/DQ checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from resnet_deploy.errors import UserError
from resnet_deploy.models import create_model

pytest.importorskip("torchao")

from resnet_deploy.quantize import load_quantized, quantize_ptq  # noqa: E402
from resnet_deploy.quantize.capture import capture, capture_for_training  # noqa: E402
from resnet_deploy.quantize.quantizer import build_quantizer  # noqa: E402
from resnet_deploy.quantize.quantizer import scheme_for  # noqa: E402

ADD = torch.ops.aten.add.Tensor
FAKE_QUANTIZERS = ("activation_post_process",)  # the modules prepare_pt2e / prepare_qat_pt2e insert


def _observed(prepared: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Is ``node`` an observer / fake-quantizer call (the quantize point convert_pt2e turns into Q/DQ)?"""
    return node.op == "call_module" and str(node.target).startswith(FAKE_QUANTIZERS)


def _source(node: torch.fx.Node) -> torch.fx.Node:
    """The op behind an observer call."""
    return node.args[0] if node.op == "call_module" else node


def _residual_adds(prepared: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Adds of two computed tensors that a ReLU reads (QAT's BatchNorm arithmetic has adds of its own)."""
    return [n for n in prepared.graph.nodes if n.op == "call_function" and n.target == ADD
            and all(isinstance(arg, torch.fx.Node) for arg in n.args[:2]) and any("relu" in str(u.target) for u in n.users)]


def _quantized_relus(prepared: torch.fx.GraphModule) -> int:
    return sum(1 for n in prepared.graph.nodes if "relu" in str(n.target) and any(_observed(prepared, u) for u in n.users))


def _prepare(model, residual_conv_input: str, qat: bool = False, target: str = "tensorrt") -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    quantizer = build_quantizer(scheme_for(target), "minmax", 99.99, (), qat=qat, residual_conv_input=residual_conv_input)
    if qat:
        return prepare_qat_pt2e(capture_for_training(model), quantizer)
    return prepare_pt2e(capture(model.eval()), quantizer)


def _conv_computed(node: torch.fx.Node) -> bool:
    """Does ``node`` come from a convolution (through the BatchNorm / QAT folding ops after it)?"""
    seen = [node]
    while seen:
        node = seen.pop()
        if node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default):
            return True
        if node.op == "call_function" and "add" not in str(node.target) and "relu" not in str(node.target):
            seen.extend(arg for arg in node.args if isinstance(arg, torch.fx.Node) and arg.op != "get_attr")
    return False


@pytest.mark.parametrize("shortcut, qat", [("A", False), ("B", False), ("A", True)])
def test_float_leaves_each_residual_adds_conv_input_unquantized(shortcut, qat):
    model = create_model("resnet8", shortcut=shortcut)  # three blocks; two of them change shape
    default, float_conv = _prepare(model, "int8", qat), _prepare(model, "float", qat)
    default_adds, float_adds = _residual_adds(default), _residual_adds(float_conv)
    assert len(default_adds) == len(float_adds) == 3
    for add in default_adds:  # unchanged: both inputs quantized
        assert all(_observed(default, arg) for arg in add.args[:2]), add.format_node()
    projections = 0
    for add in float_adds:
        conv_side, shortcut_side = add.args[:2]  # the blocks write out + shortcut(x)
        assert not _observed(float_conv, conv_side) and _conv_computed(conv_side), add.format_node()
        assert _observed(float_conv, shortcut_side), add.format_node()
        projections += _conv_computed(_source(shortcut_side))  # option B: a conv on both sides, the shortcut's stays int8
    assert projections == (2 if shortcut == "B" else 0)  # the two blocks that change shape
    # The ReLUs after the Adds still quantize the sums, as by default (the last one feeds the float
    # pooling in both).
    assert _quantized_relus(float_conv) == _quantized_relus(default) > 0


def test_unknown_residual_conv_input_is_a_user_error():
    with pytest.raises(UserError, match="--residual-conv-input must be one of int8, float"):
        build_quantizer(scheme_for("cpu"), "minmax", 99.99, (), residual_conv_input="fp16")


# ----------------------------------------------------------------------------------------- artifact


@pytest.fixture(scope="module")
def float_artifact(synthetic_checkpoint, synthetic, tmp_path_factory):
    from resnet_deploy.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("residual") / "synthetic-cpu-float"
    quantize_ptq(load_checkpoint(synthetic_checkpoint), synthetic, folder, target="cpu", method="minmax", calib_size=128,
                 evaluate=False, residual_conv_input="float")
    return folder


def _rewrite_manifest(source, destination, change) -> None:
    import shutil

    shutil.copytree(source, destination)
    manifest = json.loads((destination / "manifest.json").read_text())
    change(manifest)
    (destination / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_records_the_choice_and_older_manifests_read_as_int8(float_artifact, tmp_path):
    assert json.loads((float_artifact / "manifest.json").read_text())["residual_conv_input"] == "float"
    assert load_quantized(float_artifact).residual_conv_input == "float"
    _rewrite_manifest(float_artifact, tmp_path / "old", lambda manifest: manifest.pop("residual_conv_input"))
    assert load_quantized(tmp_path / "old").residual_conv_input == "int8"
    _rewrite_manifest(float_artifact, tmp_path / "bad", lambda manifest: manifest.update(residual_conv_input="fp16"))
    with pytest.raises(UserError, match="residual_conv_input"):
        load_quantized(tmp_path / "bad")


def test_the_pytorch_int8_references_run_the_float_placement(float_artifact):
    """The exact integer evaluation (the export's gate) and the Inductor/oneDNN lowering (bench's
    pytorch int8 row) both run a model with float residual conv inputs, and agree with its Q/DQ form."""
    from resnet_deploy.export.parity import ExactQDQReference

    quantized = load_quantized(float_artifact)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = quantized.module(x)
        exact = ExactQDQReference(quantized.module)(x)
    assert torch.allclose(exact, reference, atol=0.05 * reference.abs().max().item())
    fast = quantized.int8_cpu_callable()(x)
    assert torch.nn.functional.cosine_similarity(reference.flatten(), fast.flatten(), dim=0) > 0.99


@pytest.fixture(scope="module")
def float_export(float_artifact, synthetic_checkpoint, synthetic, tmp_path_factory):
    from resnet_deploy.export import ExportOptions, export_checkpoint

    return export_checkpoint(ExportOptions(checkpoint=synthetic_checkpoint, output_dir=tmp_path_factory.mktemp("residual-export"),
                                           name="float", int8_dir=float_artifact, dataset=synthetic, tensorrt=False,
                                           parity_images=256, threads=1))


def test_export_accepts_the_float_conv_inputs(float_export):
    """The ONNX has no Q/DQ between each block's conv2 and its Add; ONNX Runtime runs those convs in
    float (nothing to fuse into QLinearConv), which the export's check allows for, and the int8
    parity gate passes."""
    assert not float_export.failures, float_export.failures
    entry = next(a for a in float_export.manifest["artifacts"] if a.get("precision") == "int8")
    assert float_export.manifest["quantization"]["residual_conv_input"] == "float"
    qdq, kernels = entry["qdq"], entry["onnxruntime_kernels"]
    assert qdq["quantized_convolutions"] == 19 and qdq["quantized_convolutions_float_output"] == 9
    assert kernels["qlinear_conv"] == 19 - 9 and entry["parity"]["passed"]


def test_openvino_agrees_with_the_pytorch_int8_model(float_artifact, float_export, synthetic):
    """The OpenVINO runner contract's int8 gate (>= 99.5 % top-1 agreement with the exact PyTorch int8
    model) on the float placement, every convolution still int8 in OpenVINO."""
    pytest.importorskip("openvino")
    from resnet_deploy.backends import OpenVinoRunner
    from resnet_deploy.data import normalize, to_tensor_images
    from resnet_deploy.export.parity import ExactQDQReference

    batch = normalize(to_tensor_images(synthetic.test_images[:256]), synthetic.normalization)
    with torch.no_grad():
        reference = ExactQDQReference(load_quantized(float_artifact).module)(batch).numpy()
    with OpenVinoRunner(float_export.export_dir / "model-int8-cpu.onnx", precision="int8", threads=1) as runner:
        logits = runner.infer(batch.numpy())
        settings = runner.describe()
    assert settings["int8_convolutions"] == settings["convolutions"] == 19
    assert float(np.mean(logits.argmax(1) == reference.argmax(1)) * 100) >= 99.5
