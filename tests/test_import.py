"""``resnet-deploy import``: checkpoints of akamaster, chenyaofo, kuangliu and torchvision-style ResNets.

Each source model is written here from its project's published layout and key names (not its code),
given random weights and BatchNorm statistics, and saved the way the project saves it (DataParallel
prefixes and container dicts included). The imported resnet-deploy model must compute the source
model's logits on the same inputs. The torchvision-style model is torchvision's own ResNet with the
usual CIFAR stem, as users build it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from torch import nn

from resnet_deploy.checkpoint import load_checkpoint, read_checkpoint
from resnet_deploy.cli import main
from resnet_deploy.importers import CIFAR100_CLASSES, DATASET_CLASSES, FORMATS
from resnet_deploy.models import ZeroPadShortcut

TOLERANCE = 1e-5  # max |logit difference| allowed, relative to the largest logit when that is above 1


# ------------------------------------------------------------------------------------------ akamaster
# pytorch_resnet_cifar10/resnet.py: option A is a LambdaLayer around F.pad; no weights.


class LambdaLayer(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def akamaster_option_a(planes: int) -> LambdaLayer:
    return LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))


class ShortcutBasicBlock(nn.Module):
    """akamaster's and kuangliu's BasicBlock: conv1, bn1, conv2, bn2 and a ``shortcut`` module."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AkamasterResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, 1)
        self.layer2 = self._make_layer(32, blocks_per_stage, 2)
        self.layer3 = self._make_layer(64, blocks_per_stage, 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes, blocks, stride):
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            changes_shape = block_stride != 1 or self.in_planes != planes
            layers.append(ShortcutBasicBlock(self.in_planes, planes, block_stride, akamaster_option_a(planes) if changes_shape else nn.Sequential()))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


# ------------------------------------------------------------------------------------------ kuangliu
# pytorch-cifar/models/resnet.py: 64-wide 3x3 stem, four stages, `shortcut` Sequential(1x1 conv, BN).


def kuangliu_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class KuangliuBasicBlock(ShortcutBasicBlock):
    def __init__(self, in_planes, planes, stride):
        super().__init__(in_planes, planes, stride, kuangliu_shortcut(in_planes, planes, stride))


class KuangliuBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # the stride sits on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = kuangliu_shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class KuangliuResNet(nn.Module):
    def __init__(self, block, blocks_per_stage: list[int], num_classes: int = 10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, blocks_per_stage[0], 1)
        self.layer2 = self._make_layer(block, 128, blocks_per_stage[1], 2)
        self.layer3 = self._make_layer(block, 256, blocks_per_stage[2], 2)
        self.layer4 = self._make_layer(block, 512, blocks_per_stage[3], 2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


# ------------------------------------------------------------------------------------------ chenyaofo
# pytorch_cifar_models/resnet.py: torchvision's layout at CIFAR widths; `downsample` 1x1 conv + BN.


class ChenyaofoBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ChenyaofoResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks_per_stage, 1)
        self.layer2 = self._make_layer(32, blocks_per_stage, 2)
        self.layer3 = self._make_layer(64, blocks_per_stage, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [ChenyaofoBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [ChenyaofoBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


# ------------------------------------------------------------------------------------------ torchvision


def torchvision_cifar_resnet(name: str, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet as it is adapted to CIFAR: a 3x3 stride-1 stem and no max-pool."""
    model = getattr(torchvision.models, name)(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


# ------------------------------------------------------------------------------------------ saving


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics far from the defaults: a weight put in the wrong place,
    or channels in the wrong order, changes the logits. Scaled so that the logits stay near 1."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=generator) * std

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(normal(module.weight.shape, (2 / module.weight[0].numel()) ** 0.5))
            elif isinstance(module, nn.BatchNorm2d):
                count = module.num_features
                module.weight.copy_(0.5 + torch.rand(count, generator=generator) * 0.5)
                module.bias.copy_(normal(count, 0.1))
                module.running_mean.copy_(normal(count, 0.2))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator) * 1.5)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(normal(module.weight.shape, module.in_features**-0.5))
                module.bias.copy_(normal(module.bias.shape, 0.1))
    return model.eval()


def data_parallel_state(model: nn.Module) -> dict:
    """The state dict as a DataParallel-wrapped model saves it: every key prefixed ``module.``."""
    return nn.DataParallel(model).state_dict()


def save_akamaster(model, folder: Path, published: bool = True) -> Path:
    """trainer.py saves {'state_dict', 'best_prec1'} of the DataParallel model. The published .th files
    were written by PyTorch < 0.4.1 and hold no BatchNorm num_batches_tracked: drop it likewise."""
    state = {k: v for k, v in data_parallel_state(model).items() if not (published and k.endswith("num_batches_tracked"))}
    path = folder / "model.th"
    torch.save({"state_dict": state, "best_prec1": 91.25}, path)
    return path


def save_plain_state_dict(model, folder: Path, name: str) -> Path:
    path = folder / name
    torch.save(model.state_dict(), path)
    return path


def save_kuangliu(model, folder: Path) -> Path:
    """main.py saves {'net': state_dict, 'acc', 'epoch'} to checkpoint/ckpt.pth, under DataParallel on GPUs."""
    path = folder / "ckpt.pth"
    torch.save({"net": data_parallel_state(model), "acc": 95.4, "epoch": 199}, path)
    return path


SOURCES = {
    # name: (format, how to build the model, how to save it)
    "akamaster-resnet20": ("akamaster", lambda: AkamasterResNet(3), save_akamaster),
    "akamaster-resnet32": ("akamaster", lambda: AkamasterResNet(5), save_akamaster),
    "chenyaofo-cifar100-resnet20": ("chenyaofo", lambda: ChenyaofoResNet(3, 100), lambda m, d: save_plain_state_dict(m, d, "cifar100_resnet20-23dac2f1.pt")),
    "kuangliu-resnet18": ("kuangliu", lambda: KuangliuResNet(KuangliuBasicBlock, [2, 2, 2, 2]), save_kuangliu),
    "kuangliu-resnet50": ("kuangliu", lambda: KuangliuResNet(KuangliuBottleneck, [3, 4, 6, 3]), save_kuangliu),
    "torchvision-resnet18": ("torchvision", lambda: torchvision_cifar_resnet("resnet18"), lambda m, d: save_plain_state_dict(m, d, "resnet18.pth")),
}  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """source(name) -> (model, saved file), each built once per module."""
    built: dict[str, tuple[nn.Module, Path]] = {}

    def get(name: str) -> tuple[nn.Module, Path]:
        if name not in built:
            _, build, save = SOURCES[name]
            model = randomise(build(), seed=len(built))
            built[name] = (model, save(model, tmp_path_factory.mktemp(name)))
        return built[name]

    return get


def run_import(*args) -> tuple[int, str, dict | None]:
    result = CliRunner().invoke(main, ["-q", "import", *map(str, args)])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit)), result.output
    return result.exit_code, result.output, json.loads(result.stdout) if result.exit_code == 0 else None


def assert_same_logits(checkpoint: Path, source_model: nn.Module) -> None:
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = source_model(inputs)
        got = load_checkpoint(checkpoint).model(inputs)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= TOLERANCE * scale, (got - expected).abs().max().item()


# ------------------------------------------------------------------------------------------ imports


EXPECTED = {
    # name: (resnet-deploy model, shortcut, dataset, --mean/--std the format needs)
    "akamaster-resnet20": ("resnet20", "A", "cifar10", []),
    "chenyaofo-cifar100-resnet20": ("resnet20", "B", "cifar100", []),
    "kuangliu-resnet18": ("resnet18", "B", "cifar10", []),
    "kuangliu-resnet50": ("resnet50", "B", "cifar10", []),
    "torchvision-resnet18": ("resnet18", "B", "cifar10", ["--mean", "0.49,0.48,0.45", "--std", "0.25,0.24,0.26"]),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_auto_import_computes_the_source_models_logits(name, source, tmp_path):
    model, path = source(name)
    model_name, shortcut, dataset, normalization_args = EXPECTED[name]
    code, output, summary = run_import(path, "--from", "auto", *normalization_args, "-o", tmp_path / "imported.pt")
    assert code == 0, output
    assert summary["format"] == SOURCES[name][0] and summary["chosen_by"].startswith("auto")
    assert summary["model"] == {"name": model_name, "num_classes": len(DATASET_CLASSES[dataset]), "plain": False, "shortcut": shortcut}
    assert summary["dataset"] == dataset
    assert_same_logits(tmp_path / "imported.pt", model)


def test_akamaster_option_a_is_resnet_deploys_with_the_zero_channels_moved():
    """akamaster pads planes//4 zero channels on each side of the identity, resnet-deploy all after it:
    the same numbers in other channels, which is why the importer renumbers the stream's channels."""
    x = torch.randn(2, 16, 8, 8)
    theirs, ours = akamaster_option_a(32)(x), ZeroPadShortcut(16, 32, stride=2)(x)
    assert theirs.shape == ours.shape == (2, 32, 4, 4)
    assert torch.equal(theirs[:, 8:24], ours[:, :16]) and torch.equal(theirs[:, 8:24], x[:, :, ::2, ::2])
    assert not theirs[:, :8].any() and not theirs[:, 24:].any() and not ours[:, 16:].any()
    assert not torch.equal(theirs, ours)


def test_explicit_format_records_the_projects_normalisation_classes_and_source(source, tmp_path):
    _, path = source("akamaster-resnet20")
    code, output, summary = run_import(path, "--from", "akamaster", "--model", "resnet20", "--dataset", "cifar10", "-o", tmp_path / "a.pt")
    assert code == 0, output
    raw = read_checkpoint(tmp_path / "a.pt")
    assert raw["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # akamaster's trainer.py
    assert raw["dataset"]["classes"][:2] == ["airplane", "automobile"] and raw["import"]["format"] == "akamaster"
    assert raw["import"]["saved_beside_weights"] == {"best_prec1": 91.25} and raw["import"]["sha256"] == summary["sha256"]

    _, path = source("chenyaofo-cifar100-resnet20")
    code, output, _ = run_import(path, "--from", "chenyaofo", "--std", "0.3,0.3,0.3", "-o", tmp_path / "c.pt")
    assert code == 0, output
    raw = read_checkpoint(tmp_path / "c.pt")
    assert raw["normalization"] == {"mean": [0.507, 0.4865, 0.4409], "std": [0.3, 0.3, 0.3]}
    assert raw["import"]["normalization_from"] == {"mean": "chenyaofo/pytorch-cifar-models", "std": "--std"}
    assert raw["dataset"]["classes"] == CIFAR100_CLASSES


def test_cifar100_class_list_is_the_official_order():
    assert len(set(CIFAR100_CLASSES)) == 100 and CIFAR100_CLASSES == sorted(CIFAR100_CLASSES)  # the archive's meta is alphabetical


def test_an_imported_checkpoint_is_evaluated_by_the_eval_stage(source, tmp_path, cifar10_archive):
    _, path = source("akamaster-resnet20")
    assert run_import(path, "--from", "akamaster", "-o", tmp_path / "a.pt")[0] == 0
    result = CliRunner().invoke(main, ["-q", "eval", str(tmp_path / "a.pt"), "--data-dir", str(cifar10_archive), "--test-subset", "64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 64


# ------------------------------------------------------------------------------------------ errors


def _truncated(source, folder: Path) -> Path:
    blob = source("akamaster-resnet20")[1].read_bytes()
    (folder / "truncated.th").write_bytes(blob[: len(blob) // 2])
    return folder / "truncated.th"


def _saved(folder: Path, name: str, obj) -> Path:
    torch.save(obj, folder / name)
    return folder / name


def _imagenet_stem(source, folder: Path) -> Path:
    """torchvision's unmodified stem: a 7x7 stride-2 conv1 (and a max-pool, which leaves no weights)."""
    state = torch.load(source("torchvision-resnet18")[1], weights_only=True)
    state["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    return _saved(folder, "resnet18-imagenet-stem.pth", state)


def _with_extra_key(source, folder: Path) -> Path:
    saved = torch.load(source("akamaster-resnet20")[1], weights_only=True)
    saved["state_dict"]["module.layer1.0.se.fc.weight"] = torch.zeros(4, 16)
    return _saved(folder, "extra.th", saved)


ERRORS = {
    # case: (source file, arguments, what the message must say)
    "wrong format": (lambda s, d: s("akamaster-resnet20")[1], ["--from", "chenyaofo"], "is not a chenyaofo/pytorch-cifar-models checkpoint"),
    "truncated file": (_truncated, ["--from", "akamaster"], "is corrupt or not a torch file"),
    "another depth": (lambda s, d: s("akamaster-resnet32")[1], ["--from", "akamaster", "--model", "resnet20"], "holds a resnet32"),
    "CIFAR-100 weights into a 10-class model": (lambda s, d: s("chenyaofo-cifar100-resnet20")[1], ["--from", "auto", "--dataset", "cifar10"], "100-class classifier (cifar100 weights"),
    "unknown layout": (lambda s, d: _saved(d, "vgg.pth", {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8)}), ["--from", "auto"], "keys it did not expect: classifier.weight, features.0.weight"),
    "unexpected key": (_with_extra_key, ["--from", "akamaster"], "keys it did not expect: layer1.0.se.fc.weight"),
    "ImageNet stem": (_imagenet_stem, ["--from", "torchvision", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"], "7x7 stem is ImageNet's"),
    "no normalisation known": (lambda s, d: s("torchvision-resnet18")[1], ["--from", "torchvision"], "records no normalisation for cifar10"),
    "bad --std": (lambda s, d: s("kuangliu-resnet18")[1], ["--from", "kuangliu", "--std", "0.2,0,0.2"], "std above 0"),
    "whole pickled model": (lambda s, d: _saved(d, "model.pt", nn.Linear(2, 2)), ["--from", "auto"], "holds objects other than tensors"),
    "not a state dict": (lambda s, d: _saved(d, "list.pt", [torch.zeros(1)]), ["--from", "auto"], "holds no state dict"),
    "missing file": (lambda s, d: d / "absent.th", ["--from", "auto"], "source checkpoint not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_sources_exit_2_with_a_clear_message(case, source, tmp_path):
    make, args, message = ERRORS[case]
    code, output, _ = run_import(make(source, tmp_path), *args, "-o", tmp_path / "out.pt")
    assert code == 2, output
    assert message in output
    assert not (tmp_path / "out.pt").exists()


def test_output_must_not_replace_the_source(source, tmp_path):
    path = tmp_path / "model.th"
    path.write_bytes(source("akamaster-resnet20")[1].read_bytes())
    code, output, _ = run_import(path, "--from", "akamaster", "-o", path)
    assert code == 2 and "is the source file" in output


def test_format_table_is_the_clis_choice():
    from resnet_deploy.cli.import_commands import import_command

    choice = next(param for param in import_command.params if param.name == "source_format").type
    assert list(choice.choices) == ["auto", *FORMATS]
