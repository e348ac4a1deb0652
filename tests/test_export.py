"""ONNX export: every model family, dynamic/static batch, metadata, parity that can fail, bad files.

Family coverage uses small models so the file stays fast on 2 cores: ResNet20 and Plain20 (basic
blocks, option-A shortcut), and a 4-stage bottleneck network with one block per stage built from the
same classes as ResNet50 (Bottleneck blocks, option-B projection shortcuts), plain and residual.
ResNet50 itself only adds depth (more of the same blocks), so it runs once, as a slow test. BatchNorm
statistics are randomised so folding them is actually exercised (fresh BN layers fold to identity).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.cli import main
from resnet_deploy.data import Normalization
from resnet_deploy.errors import UserError
from resnet_deploy.export import (
    ExportInfo,
    check_parity,
    export_onnx,
    fixed_batch,
    fold_batchnorm,
    load_manifest,
    onnx_session,
    read_metadata,
    verify_onnx_file,
)
from resnet_deploy.export.onnx_export import graph_problems
from resnet_deploy.models import Bottleneck, CifarResNet, ModelSpec, build_model

NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.8 + 0.4)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 0.8 + 0.6)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def trained_logit_scale(model: CifarResNet, target: float = 15.0) -> CifarResNet:
    """Scale the classifier so logits are the size a trained model's are (|logit| <= ~15): a random deep
    network with random BN statistics gives logits in the thousands, where float32 rounding alone
    exceeds the 1e-4 absolute parity bound that is meant for real models."""
    with torch.no_grad():
        peak = model(fixed_batch(NORM, 8).tensor()).abs().max().item()
        model.fc.weight.mul_(target / peak)
        model.fc.bias.mul_(target / peak)
    return model


def small_bottleneck(plain: bool = False) -> CifarResNet:
    return CifarResNet(Bottleneck, [1, 1, 1, 1], [16, 32, 64, 128], num_classes=10, shortcut="B", plain=plain)


FAMILIES = {
    "resnet20": lambda: build_model(ModelSpec("resnet20")),
    "plain20": lambda: build_model(ModelSpec("resnet20", plain=True)),
    "bottleneck": lambda: small_bottleneck(),
    "plain-bottleneck": lambda: small_bottleneck(plain=True),
}


def info_for(name: str, precision: str = "fp32") -> ExportInfo:
    return ExportInfo({"name": name}, NORM.to_dict(), [f"c{i}" for i in range(10)], "0" * 64, precision)


@pytest.fixture(scope="module")
def resnet20_export(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(ModelSpec("resnet20")))
    path = tmp_path_factory.mktemp("r20") / "model-fp32.onnx"
    result = export_onnx(model, path, info_for("resnet20"))
    return model, path, result


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_exports_with_fp32_parity(family, tmp_path):
    torch.manual_seed(1)
    model = trained_logit_scale(randomize_batchnorm(FAMILIES[family](), seed=2))
    path = tmp_path / f"{family}.onnx"
    result = export_onnx(model, path, info_for(family))
    assert result.dynamic_batch and result.opset >= 17
    assert "BatchNormalization" not in result.op_counts and result.op_counts["Conv"] > 0
    parity = check_parity(path, model, fixed_batch(NORM, 32), "fp32")
    assert parity["passed"], parity
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 100.0


def test_batchnorm_folding_keeps_outputs(resnet20_export):
    model, _, _ = resnet20_export
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_dynamic_batch_runs_at_1_and_64(resnet20_export):
    model, path, _ = resnet20_export
    proto = verify_onnx_file(path)
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    session = onnx_session(path)
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32)
        out = session.run(None, {"input": x.numpy()})[0]
        assert out.shape == (batch, 10)
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4)


def test_static_batch_is_fixed(tmp_path):
    model = randomize_batchnorm(build_model(ModelSpec("resnet20")))
    path = tmp_path / "static.onnx"
    result = export_onnx(model, path, info_for("resnet20"), dynamic_batch=False, static_batch=4)
    assert not result.dynamic_batch and result.static_batch == 4
    proto = verify_onnx_file(path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    session = onnx_session(path)
    assert session.run(None, {"input": np.zeros((4, 3, 32, 32), np.float32)})[0].shape == (4, 10)
    with pytest.raises(Exception):
        session.run(None, {"input": np.zeros((5, 3, 32, 32), np.float32)})


def test_metadata_props_describe_the_model(resnet20_export):
    _, path, _ = resnet20_export
    proto = onnx.load(str(path))
    meta = read_metadata(proto)
    assert meta["input_name"] == "input" and meta["output_name"] == "logits"
    assert meta["normalization_mean"] == list(NORM.mean) and meta["normalization_std"] == list(NORM.std)
    assert meta["classes"] == [f"c{i}" for i in range(10)]
    assert meta["model_spec"] == {"name": "resnet20"}
    assert meta["precision"] == "fp32" and meta["checkpoint_sha256"] == "0" * 64
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]


def test_parity_fails_on_a_perturbed_model(resnet20_export):
    """The check must be able to fail: a reference whose one conv differs by 1 % is caught."""
    model, path, _ = resnet20_export
    perturbed = fold_batchnorm(model)
    with torch.no_grad():
        perturbed.get_submodule("layers.1.0.conv1").weight.mul_(1.01)
    parity = check_parity(path, perturbed, fixed_batch(NORM, 32), "fp32")
    assert not parity["passed"]
    assert any(f.startswith("max_abs_diff") for f in parity["failures"])
    # and the same inputs with the real reference pass
    assert check_parity(path, model, fixed_batch(NORM, 32), "fp32")["passed"]


def test_fp16_export_keeps_float32_interface(tmp_path):
    model = randomize_batchnorm(build_model(ModelSpec("resnet20")))
    path = tmp_path / "model-fp16.onnx"
    result = export_onnx(model, path, info_for("resnet20", "fp16"))
    proto = verify_onnx_file(path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    dtypes = {init.data_type for init in proto.graph.initializer if init.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert result.op_counts["Cast"] == 2
    parity = check_parity(path, model, fixed_batch(NORM, 64), "fp16")
    assert parity["passed"], parity
    assert 1e-6 < parity["max_abs_diff"] < 5e-2  # half precision really is in use, and close


def test_verify_rejects_missing_and_corrupt_files(resnet20_export, tmp_path):
    _, path, _ = resnet20_export
    with pytest.raises(UserError, match="not found"):
        verify_onnx_file(tmp_path / "absent.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    with pytest.raises(UserError):
        verify_onnx_file(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file at all" * 50)
    with pytest.raises(UserError):
        verify_onnx_file(garbage)
    broken = onnx.load(str(path))
    del broken.graph.initializer[0]  # a conv weight nobody defines any more
    broken_path = tmp_path / "broken.onnx"
    onnx.save(broken, str(broken_path))
    with pytest.raises(UserError, match="checker"):
        verify_onnx_file(broken_path)
    with pytest.raises(UserError, match="expected"):
        verify_onnx_file(path, expected_input="images")


def test_graph_check_flags_training_ops():
    node = onnx.helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    drop = onnx.helper.make_node("Dropout", ["y"], ["z"])
    graph = onnx.helper.make_graph([node, drop], "g", [], [])
    problems = graph_problems(onnx.helper.make_model(graph), "fp32")
    assert problems and "BatchNormalization" in problems[0] and "Dropout" in problems[0]
    assert graph_problems(onnx.helper.make_model(graph), "int8")[-1].startswith("int8 graph has no")


# --------------------------------------------------------------------------------------------- CLI + manifest


@pytest.fixture(scope="module")
def cli_export(synthetic_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    result = CliRunner().invoke(
        main, ["export", str(synthetic_checkpoint), "--fp16", "--no-tensorrt", "--output-dir", str(out), "--name", "syn",
               "--dataset", "synthetic"]
    )
    assert result.exit_code == 0, result.output
    return out / "syn", result


def test_cli_export_writes_manifest(cli_export, synthetic_checkpoint):
    export_dir, result = cli_export
    raw = json.loads((export_dir / "manifest.json").read_text())
    assert raw["format"] == "resnet-deploy/export" and raw["version"] == 1
    assert raw["input_name"] == "input" and raw["output_name"] == "logits"
    assert raw["model"]["name"] == "resnet20" and len(raw["classes"]) == 10
    kinds = [(a["kind"], a["precision"]) for a in raw["artifacts"]]
    assert kinds == [("onnx", "fp32"), ("onnx", "fp16")]
    for artifact in raw["artifacts"]:
        assert not artifact["path"].startswith("/")  # relative: the folder can move
        assert artifact["parity"]["passed"] and artifact["opset"] >= 17 and artifact["dynamic_batch"]
        assert "synthetic test images" in artifact["parity"]["inputs"]
    assert raw["skipped"][0]["kind"] == "tensorrt" and "--no-tensorrt" in raw["skipped"][0]["reason"]
    manifest = load_manifest(export_dir)
    assert manifest["artifacts"][0]["path"] == str((export_dir / "model-fp32.onnx").resolve())
    assert "parity ok" in result.output


def test_load_manifest_detects_changed_and_missing_files(cli_export, tmp_path):
    import shutil

    export_dir, _ = cli_export
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    assert load_manifest(copy)["export_dir"] == str(copy.resolve())  # relocatable
    onnx_file = copy / "model-fp16.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\x00")
    with pytest.raises(UserError, match="changed since export"):
        load_manifest(copy)
    onnx_file.unlink()
    with pytest.raises(UserError, match="missing"):
        load_manifest(copy)
    with pytest.raises(UserError, match="no export manifest"):
        load_manifest(tmp_path / "nowhere")


def test_cli_export_fails_and_names_the_check_on_a_perturbed_export(synthetic_checkpoint, tmp_path, monkeypatch):
    """Perturb the weights that reach the ONNX file: parity must catch it, exit 1 and say which check."""
    from resnet_deploy.export import onnx_export

    original = onnx_export.prepare_for_export

    def perturbed(model, precision):
        prepared = original(model, precision)
        with torch.no_grad():
            next(p for p in prepared.parameters() if p.dim() == 4).mul_(1.05)
        return prepared

    monkeypatch.setattr(onnx_export, "prepare_for_export", perturbed)
    result = CliRunner().invoke(main, ["export", str(synthetic_checkpoint), "--no-tensorrt", "--output-dir", str(tmp_path), "--name", "bad"])
    assert result.exit_code == 1, result.output
    assert "fp32 ONNX" in result.output and "max_abs_diff" in result.output
    raw = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert raw["artifacts"][0]["parity"]["passed"] is False


def test_cli_rejects_bad_options(synthetic_checkpoint, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(synthetic_checkpoint), "--opset", "13", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--opset 13" in result.output
    result = runner.invoke(main, ["export", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(main, ["export", str(synthetic_checkpoint), "--name", "../up", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--name" in result.output


@pytest.mark.slow
def test_resnet50_bottleneck_export(tmp_path):
    model = trained_logit_scale(randomize_batchnorm(build_model(ModelSpec("resnet50"))))
    path = tmp_path / "r50.onnx"
    result = export_onnx(model, path, info_for("resnet50"))
    assert result.op_counts["Conv"] == 53 and "BatchNormalization" not in result.op_counts
    parity = check_parity(path, model, fixed_batch(NORM, 8), "fp32")
    assert parity["passed"], parity
