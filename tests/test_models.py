"""Model shapes, parameter counts (pinned against the papers), plain variants, export-friendliness."""

from __future__ import annotations

import pytest
import torch

from resnet_deploy.errors import UserError
from resnet_deploy.models import (
    BasicBlock,
    Bottleneck,
    ModelSpec,
    available_models,
    build_model,
    count_flops,
    count_parameters,
    create_model,
    normalize_spec,
)

# He et al. 2016 Table 6 gives 0.27M/0.46M/0.66M/0.85M/1.7M for option A; option B adds 1x1 projections.
# ResNet18/50 option B counts match the widely used CIFAR re-implementations (11.17M / 23.52M).
PINNED_PARAMETERS = {
    ("resnet20", "A"): 269_722,
    ("resnet20", "B"): 272_474,
    ("resnet32", "A"): 464_154,
    ("resnet44", "A"): 658_586,
    ("resnet56", "A"): 853_018,
    ("resnet56", "B"): 855_770,
    ("resnet110", "A"): 1_727_962,
    ("resnet18", "B"): 11_173_962,
    ("resnet34", "B"): 21_282_122,
    ("resnet50", "B"): 23_520_842,
    ("resnet101", "B"): 42_512_970,
    ("resnet152", "B"): 58_156_618,
}


@pytest.mark.parametrize(("name", "shortcut"), list(PINNED_PARAMETERS))
def test_parameter_counts_are_pinned(name, shortcut):
    assert count_parameters(create_model(name, shortcut=shortcut)) == PINNED_PARAMETERS[(name, shortcut)]


def test_resnet20_is_the_papers_027m():
    assert round(count_parameters(create_model("resnet20")) / 1e6, 2) == 0.27


def test_family_default_shortcuts():
    assert create_model("resnet56").shortcut_option == "A"
    assert create_model("resnet18").shortcut_option == "B"
    assert normalize_spec("plain20", 10) == ModelSpec("resnet20", 10, True, "A")


@pytest.mark.parametrize("name", available_models())
@pytest.mark.parametrize("plain", [False, True])
def test_forward_shape_for_every_model(name, plain):
    model = create_model(name, num_classes=100, plain=plain).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50"])
def test_plain_has_same_layers_without_shortcuts(name):
    residual, plain = create_model(name, shortcut="A"), create_model(name, plain=True, shortcut="A")
    # Option A shortcuts are parameter-free, so plain and residual have identical parameter sets.
    assert [n for n, _ in residual.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert all(block.shortcut is None for block in plain.modules() if isinstance(block, (BasicBlock, Bottleneck)))
    assert all(block.plain for block in plain.modules() if isinstance(block, (BasicBlock, Bottleneck)))


def test_residual_and_plain_compute_differently():
    torch.manual_seed(0)
    residual = create_model("resnet20").eval()
    plain = create_model("plain20").eval()
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(residual(x), plain(x))


def test_cifar_family_feature_maps():
    """He et al. 4.2: maps of 32/16/8 with 16/32/64 filters; the 18..152 variants: 32/16/8/4."""
    shapes = []
    model = create_model("resnet20").eval()
    hooks = [stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for stage in model.layers]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    for hook in hooks:
        hook.remove()
    shapes.clear()
    model = create_model("resnet50").eval()
    for stage in model.layers:
        stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert shapes == [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]
    assert isinstance(model.conv1, torch.nn.Conv2d) and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_depth_counts_layers():
    """6n+2: ResNet56 has 55 convolutions in its blocks and stem, plus the FC (option A adds none)."""
    model = create_model("resnet56")
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    fcs = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert convs + fcs == 56


def test_any_6n_plus_2_depth_and_bad_names():
    assert count_parameters(create_model("resnet8")) < count_parameters(create_model("resnet20"))
    with pytest.raises(UserError, match="unknown model"):
        create_model("resnet21")
    with pytest.raises(UserError, match="unknown model"):
        create_model("vgg16")
    with pytest.raises(UserError, match="shortcut"):
        build_model(ModelSpec("resnet20", 10, False, "C"))


def test_flops_resnet20():
    # ~41 M multiply-adds per 32x32 image (He et al. report 41M for ResNet20-class nets).
    assert 80e6 < count_flops(create_model("resnet20")) < 83e6


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet50"])
def test_torch_export_with_dynamic_batch(name):
    model = create_model(name).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_batchnorm_folds_into_convs():
    """Every conv is bias-free and directly followed by a BN, so BN folds at export."""
    from torch.fx.experimental.optimization import fuse

    model = create_model("resnet20").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused = fuse(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
