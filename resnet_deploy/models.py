"""CIFAR ResNets and their plain (shortcut-free) counterparts.

Two families, laid out the way torchvision's ``models/resnet.py`` is: one block class per kind, one
network class per family with a ``_make_layer``, and small factory functions.

* ``resnet20`` .. ``resnet110`` (any depth 6n+2): He et al. 2016, section 4.2. A 3x3 stem with 16
  filters, three stages of n basic blocks with 16/32/64 filters (feature maps 32/16/8), stride-2
  convolutions to downsample, global average pooling and a fully connected layer.
* ``resnet18`` .. ``resnet152``: the usual CIFAR adaptation of the ImageNet ResNets: a 3x3 stride-1
  stem with 64 filters and no max-pool, four stages of 64/128/256/512 filters (maps 32/16/8/4), basic
  blocks for 18/34 and 4x-expanding bottlenecks for 50 and deeper.

Every model has a plain twin (``plain=True``): the same layers, with the shortcut removed.

Shortcuts where the shape changes:
* ``"A"``: parameter-free. Subsample the identity spatially and zero-pad the new channels. This is
  what the paper used for its CIFAR results, so it is the default of the 6n+2 family: ResNet20 then
  has the paper's 0.27 M parameters and results compare with Table 6.
* ``"B"``: a 1x1 convolution + BN projection. The default of ResNet18..152, as in the ImageNet paper
  and the common CIFAR re-implementations.

The graph is friendly to torch.export, ONNX and int8 quantization: no data-dependent Python control
flow, every convolution is ``bias=False`` and followed by a BatchNorm (foldable), and each ReLU and
each residual addition is its own op so a quantizer can annotate them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

SHORTCUT_OPTIONS = ("A", "B")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A shortcut: identity subsampled by ``stride`` with zero channels appended."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(in_planes: int, out_planes: int, stride: int, option: str) -> nn.Module | None:
    """The shortcut branch of a block; None means identity."""
    if stride == 1 and in_planes == out_planes:
        return None
    if option == "A":
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``plain=True`` drops the shortcut and keeps everything else."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", plain: bool = False):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.plain = plain
        self.shortcut = None if plain else make_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.plain:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu2(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B", plain: bool = False):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU(inplace=False)
        self.plain = plain
        self.shortcut = None if plain else make_shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if not self.plain:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu3(out)


class CifarResNet(nn.Module):
    """Stem, stages of residual blocks, global average pool, FC.

    ``widths`` and ``blocks_per_stage`` give the stages; the first stage keeps the stem's resolution,
    each later one halves it with a stride-2 first block.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int = 10,
        shortcut: str = "A",
        plain: bool = False,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUT_OPTIONS:
            raise UserError(f"shortcut must be one of {', '.join(SHORTCUT_OPTIONS)}, got {shortcut!r}")
        self.shortcut_option = shortcut
        self.plain = plain
        self.in_planes = widths[0]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        stages = []
        for index, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
            stages.append(self._make_layer(block, width, blocks, stride=1 if index == 0 else 2))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride, shortcut=self.shortcut_option, plain=self.plain))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # He initialisation for convolutions, as the paper (section 3.4, following its reference [13]).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in checkpoints as a plain dict."""

    name: str
    num_classes: int = 10
    plain: bool = False
    shortcut: str | None = None  # None: the family's default

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(**{key: data[key] for key in ("name", "num_classes", "plain", "shortcut") if key in data})

    @property
    def display_name(self) -> str:
        return ("plain" if self.plain else "resnet") + self.name.removeprefix("resnet")


def _cifar_depth_family(depth: int) -> Callable[..., CifarResNet]:
    n = (depth - 2) // 6

    def factory(num_classes: int = 10, shortcut: str | None = None, plain: bool = False) -> CifarResNet:
        return CifarResNet(BasicBlock, [n] * 3, [16, 32, 64], num_classes, shortcut or "A", plain)

    factory.__doc__ = (
        f"ResNet{depth} for CIFAR (He et al. 2016, 4.2): 3 stages of {n} basic blocks, 16/32/64 filters. "
        "Shortcut option A by default."
    )
    return factory


def _imagenet_style(block, blocks_per_stage: list[int], depth: int) -> Callable[..., CifarResNet]:
    def factory(num_classes: int = 10, shortcut: str | None = None, plain: bool = False) -> CifarResNet:
        return CifarResNet(block, blocks_per_stage, [64, 128, 256, 512], num_classes, shortcut or "B", plain)

    factory.__doc__ = (
        f"ResNet{depth}, CIFAR variant: 3x3 stride-1 stem, no max-pool, {block.__name__} stages "
        f"{blocks_per_stage} of 64/128/256/512 filters. Shortcut option B by default."
    )
    return factory


MODEL_FACTORIES: dict[str, Callable[..., CifarResNet]] = {
    **{f"resnet{depth}": _cifar_depth_family(depth) for depth in (20, 32, 44, 56, 110)},
    "resnet18": _imagenet_style(BasicBlock, [2, 2, 2, 2], 18),
    "resnet34": _imagenet_style(BasicBlock, [3, 4, 6, 3], 34),
    "resnet50": _imagenet_style(Bottleneck, [3, 4, 6, 3], 50),
    "resnet101": _imagenet_style(Bottleneck, [3, 4, 23, 3], 101),
    "resnet152": _imagenet_style(Bottleneck, [3, 8, 36, 3], 152),
}


MAX_CIFAR_DEPTH = 1202


def available_models() -> list[str]:
    return list(MODEL_FACTORIES)


def parse_model_name(name: str) -> tuple[str, bool]:
    """Map ``resnet56`` / ``plain56`` / ``resnet1202`` to (registry name, plain).

    Any 6n+2 depth is accepted for the CIFAR family, so ``resnet1202`` works as in the paper.
    """
    key = name.lower().strip()
    plain = key.startswith("plain")
    if plain:
        key = "resnet" + key.removeprefix("plain").lstrip("-_")
    if key not in MODEL_FACTORIES:
        depth = key.removeprefix("resnet")
        # Capped at the paper's deepest (1202): a name from a file or an option must not make us
        # build millions of layers.
        if not (depth.isdigit() and 8 <= int(depth) <= MAX_CIFAR_DEPTH and (int(depth) - 2) % 6 == 0):
            raise UserError(
                f"unknown model {name!r}; choose one of {', '.join(available_models())} "
                f"(or any resnet<6n+2> up to {MAX_CIFAR_DEPTH}, or a plain<depth> counterpart)"
            )
    return key, plain


def build_model(spec: ModelSpec) -> CifarResNet:
    """Build an untrained model from its spec."""
    key, plain_from_name = parse_model_name(spec.name)
    factory = MODEL_FACTORIES.get(key) or _cifar_depth_family(int(key.removeprefix("resnet")))
    if spec.num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {spec.num_classes}")
    return factory(num_classes=spec.num_classes, shortcut=spec.shortcut, plain=spec.plain or plain_from_name)


def create_model(name: str, num_classes: int = 10, plain: bool = False, shortcut: str | None = None) -> CifarResNet:
    """Convenience wrapper: ``create_model("resnet20")``, ``create_model("plain56", 100)``."""
    key, plain_from_name = parse_model_name(name)
    return build_model(ModelSpec(key, num_classes, plain or plain_from_name, shortcut))


def normalize_spec(name: str, num_classes: int, plain: bool = False, shortcut: str | None = None) -> ModelSpec:
    """A canonical spec: registry name, plain flag folded in, the family's default shortcut made explicit."""
    key, plain_from_name = parse_model_name(name)
    model = build_model(ModelSpec(key, num_classes, plain or plain_from_name, shortcut))
    return ModelSpec(key, num_classes, plain or plain_from_name, model.shortcut_option)


def build_model_shell(spec: ModelSpec) -> CifarResNet:
    """The model of ``spec`` on the meta device: every layer and parameter shape, no weights.

    Nothing is allocated or initialised, so counting the parameters and FLOPs of ResNet152 takes
    milliseconds instead of building 58 M real weights; ``count_parameters`` and ``count_flops`` give
    the same figures on a shell as on the real model. A shell cannot be run on data or saved.
    """
    with torch.device("meta"):
        return build_model(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int = 32) -> int:
    """FLOPs of one forward pass of one image (a multiply-add counts as 2), by torch's FlopCounterMode.

    Works on a real model and on a meta-device shell (``build_model_shell``): the image is made on the
    model's own device, and FLOPs depend on shapes only.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops()
