"""Import checkpoints of the CIFAR ResNet projects people already train with.

Each source format is one row of ``FORMATS``: which dict key of the file holds the state dict, what
the project calls its classifier and its 1x1-convolution shortcut, how many stages its models have,
and how its training code normalises the images. That is all that tells the four apart: they lay out
their networks as resnet-deploy does (3x3 stride-1 stem without max-pool, post-activation blocks,
a bottleneck's stride on its 3x3 convolution, BatchNorm after every convolution, global average
pooling, one linear layer), so a checkpoint becomes a resnet-deploy one by renaming its keys. One
difference changes numbers, not only names: akamaster's option-A shortcut puts the zero channels on
both sides of the identity, resnet-deploy's after it; ``_move_padding_after_identity`` reorders the
channels so both compute the same function.

Nothing is guessed silently: the depth comes from the blocks in the file, the dataset from the
classifier's width, and a file that fits no resnet-deploy model is refused, naming the keys or
shapes that do not fit.

torch is imported inside the functions, as in ``data/``: the CLI reads ``FORMAT_CHOICES`` at start-up
and every command's ``--help`` would otherwise wait for torch to load.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .data import CIFAR10_CLASSES, Normalization
from .errors import UserError
from .fileio import sha256_file, torch_load_safe

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from .models import ModelSpec

# torchvision's CIFAR-100 class order, the ``fine_label_names`` of the official archive, which every
# source project trains with (torchvision.datasets.CIFAR100) and resnet-deploy's CIFAR-100 loader reads.
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip

# Every project uses torchvision's CIFAR datasets, whose class order is the official archives' (kuangliu
# prints 'plane', 'car' for airplane, automobile: other names, same order).
DATASET_CLASSES = {"cifar10": list(CIFAR10_CLASSES), "cifar100": CIFAR100_CLASSES}

# The mean and std each project's training code normalises with (train and test transforms alike).
_IMAGENET_STATISTICS = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # akamaster trainer.py
_KUANGLIU_CIFAR10 = Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # kuangliu main.py
# chenyaofo's released weights: the data config in the training logs the README links to each model.
_CHENYAOFO = {
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)),
    "cifar100": Normalization((0.507, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}


@dataclass(frozen=True)
class SourceFormat:
    """What tells one project's checkpoints apart, and what resnet-deploy must know to use them."""

    name: str  # the value of --from
    project: str
    container: str | None  # the key of the saved dict that holds the state dict; None: the file is one
    head: str  # the classifier: <head>.weight, <head>.bias
    projection: str  # the Sequential(1x1 conv, BN) shortcut of a block that changes shape
    stages: int  # layer1 .. layer<stages>
    normalization: dict[str, Normalization]  # per dataset; a dataset missing here needs --mean/--std
    note: str
    pads_both_sides: bool = False  # its option-A shortcut puts half the zero channels before the identity

    def recognises(self, state: dict) -> bool:
        # (head, stages) differs for every row, so at most one format recognises a file.
        return f"{self.head}.weight" in state and len(_architecture(state)[0]) == self.stages


FORMATS = {
    source.name: source
    for source in (
        SourceFormat(
            "akamaster", "akamaster/pytorch_resnet_cifar10", "state_dict", "linear", "shortcut", 3,
            {"cifar10": _IMAGENET_STATISTICS},
            "option-A shortcuts pad zero channels on both sides of the identity: channels reordered to "
            "resnet-deploy's identity-first padding (the same function)",
            pads_both_sides=True,
        ),
        SourceFormat(
            "chenyaofo", "chenyaofo/pytorch-cifar-models", None, "fc", "downsample", 3, _CHENYAOFO,
            "1x1 conv + BN 'downsample' shortcuts: imported with resnet-deploy's shortcut B, not the "
            "6n+2 family's default A",
        ),
        SourceFormat(
            "kuangliu", "kuangliu/pytorch-cifar", "net", "linear", "shortcut", 4, {"cifar10": _KUANGLIU_CIFAR10},
            "its F.avg_pool2d(out, 4) is the global average pooling of resnet-deploy on 32x32 images",
        ),
        SourceFormat(
            "torchvision", "torchvision.models.resnet18..152 with the CIFAR stem", None, "fc", "downsample", 4, {},
            "assumed torchvision's CIFAR adaptation (conv1 3x3 stride 1, maxpool replaced by Identity): "
            "a state dict cannot show a stride or a max-pool",
        ),
    )
}  # fmt: skip
FORMAT_CHOICES = ("auto", *FORMATS)

_BLOCK_KEY = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_DATA_PARALLEL_PREFIX = "module."  # DataParallel / DistributedDataParallel prefix every key with it


# --------------------------------------------------------------------------------------------- reading


def _state_dict_in(loaded: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in a loaded file, and the plain values saved beside it (epoch, accuracy)."""
    import torch

    containers = [source.container for source in FORMATS.values() if source.container]
    beside: dict[str, Any] = {}
    for key in containers:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            beside = {k: _plain(v) for k, v in loaded.items() if k != key and _plain(v) is not None}
            loaded = loaded[key]
            break
    if not (isinstance(loaded, dict) and loaded and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())):
        found = f"a dict with keys {list(loaded)[:6]}" if isinstance(loaded, dict) else f"a {type(loaded).__name__}"
        raise UserError(
            f"{path} holds no state dict: expected a dict of tensors, or one under "
            f"{' or '.join(repr(key) for key in containers)}; found {found}"
        )
    if all(key.startswith(_DATA_PARALLEL_PREFIX) for key in loaded):
        loaded = {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in loaded.items()}
    return loaded, beside


def _plain(value: Any) -> Any:
    """A number or string worth recording (an accuracy saved as a 0-d tensor counts); None otherwise."""
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (bool, int, float, str)) else None


def _architecture(state: dict) -> tuple[list[int], bool]:
    """Blocks per stage (from the ``layer<s>.<b>.`` keys) and whether the blocks are bottlenecks."""
    blocks: dict[int, int] = {}
    bottleneck = False
    for key in state:
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
            bottleneck |= match[3].startswith("conv3.")
    return [blocks.get(stage, 0) for stage in range(1, max(blocks, default=0) + 1)], bottleneck


def _choose_format(state: dict, requested: str, path: Path) -> tuple[SourceFormat, str]:
    """The format asked for (checked against the keys), or with ``auto`` the one the keys fit."""
    matching = [source for source in FORMATS.values() if source.recognises(state)]
    found = _layout(state)
    if requested != "auto":
        source = FORMATS[requested]
        if source in matching:
            return source, f"--from {requested}"
        raise UserError(
            f"{path} is not a {source.project} checkpoint: those have a '{source.head}' classifier and "
            f"{source.stages} stages (layer1..layer{source.stages}); this file has {found}",
            hint=f"it fits --from {matching[0].name}" if matching else "--from auto names the format a file fits",
        )
    if matching:
        return matching[0], f"auto, from its {found}"
    known = {"conv1", "bn1", *(source.head for source in FORMATS.values())}
    unexpected = sorted(key for key in state if key.split(".")[0] not in known and not re.fullmatch(r"layer\d+", key.split(".")[0]))
    raise UserError(
        f"{path} has a layout none of the formats has ({found})"
        + (f"; keys it did not expect: {_some(unexpected)}" if unexpected else ""),
        hint="supported: " + "; ".join(f"{s.name} ({s.project}): '{s.head}' classifier, {s.stages} stages" for s in FORMATS.values()),
    )


def _layout(state: dict) -> str:
    heads = sorted({source.head for source in FORMATS.values() if f"{source.head}.weight" in state})
    return f"classifier {' and '.join(repr(head) for head in heads) or 'missing'}, {len(_architecture(state)[0])} stages"


def _some(keys: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


# --------------------------------------------------------------------------------------------- model


def _model_name(blocks: list[int], bottleneck: bool, path: Path) -> str:
    """The resnet-deploy model with these blocks per stage."""
    import torch

    from .models import Bottleneck, ModelSpec, available_models, build_model

    if len(blocks) == 3 and not bottleneck and len(set(blocks)) == 1:
        return f"resnet{6 * blocks[0] + 2}"  # He et al. 2016, 4.2: n blocks per stage, 6n+2 layers
    for name in available_models():
        with torch.device("meta"):
            candidate = build_model(ModelSpec(name))
        if [len(stage) for stage in candidate.layers] == blocks and isinstance(candidate.layers[0][0], Bottleneck) == bottleneck:
            return name
    raise UserError(f"{path} has {_describe(blocks, bottleneck)}: no resnet-deploy model has that many")


def _describe(blocks: list[int], bottleneck: bool) -> str:
    return f"{'bottleneck' if bottleneck else 'basic'} blocks {blocks} per stage"


def _check_requested_model(name: str, requested: str | None, blocks: list[int], bottleneck: bool, path: Path) -> None:
    from .models import parse_model_name

    if requested is None:
        return
    key, plain = parse_model_name(requested)
    if plain:
        raise UserError(f"--model {requested}: the imported networks have shortcuts; a plain model cannot hold them")
    if key != name:
        raise UserError(
            f"{path} holds a {name} ({_describe(blocks, bottleneck)}), not the {key} --model asks for",
            hint="leave out --model to import the depth the file holds",
        )


def _dataset_for(state: dict, source: SourceFormat, requested: str | None, path: Path) -> tuple[int, str]:
    """Classes from the classifier's width; a --dataset of another size is refused."""
    head = state[f"{source.head}.weight"]
    if head.ndim != 2:
        raise UserError(f"{path}: {source.head}.weight has shape {tuple(head.shape)}, not (classes, features) of a linear classifier")
    num_classes = int(head.shape[0])
    by_size = {len(classes): name for name, classes in DATASET_CLASSES.items()}
    if requested is None:
        if num_classes not in by_size:
            sizes = ", ".join(f"{name} ({size})" for size, name in by_size.items())
            raise UserError(f"{path} has a {num_classes}-class classifier: models of {sizes} classes can be imported")
        return num_classes, by_size[num_classes]
    if len(DATASET_CLASSES[requested]) != num_classes:
        weights_of = f"{by_size[num_classes]} weights, " if num_classes in by_size else ""
        raise UserError(
            f"{path} holds a {num_classes}-class classifier ({weights_of}'{source.head}.weight'), "
            f"but --dataset {requested} has {len(DATASET_CLASSES[requested])} classes"
        )
    return num_classes, requested


def _source_key(key: str, source: SourceFormat) -> str:
    """resnet-deploy's name of a weight in the source's terms: layers.1.0.shortcut.0.weight ->
    layer2.0.downsample.0.weight, fc.bias -> linear.bias; the stem's conv1/bn1 are named alike."""
    parts = key.split(".")
    if parts[0] == "layers":
        rest = [source.projection if parts[3] == "shortcut" else parts[3], *parts[4:]]
        return ".".join([f"layer{int(parts[1]) + 1}", parts[2], *rest])
    if parts[0] == "fc":
        return ".".join([source.head, *parts[1:]])
    return key


def _weights_for(spec: ModelSpec, state: dict, source: SourceFormat, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``spec`` taken from the source's: every key and shape must fit."""
    import torch

    from .models import build_model

    with torch.device("meta"):
        expected = build_model(spec).state_dict()
    wanted = {key: _source_key(key, source) for key in expected}
    unexpected = sorted(set(state) - set(wanted.values()))
    # BatchNorm's step counter is absent from files of PyTorch < 0.4.1 (akamaster's); eval never reads it.
    missing = [name for key, name in wanted.items() if name not in state and not key.endswith("num_batches_tracked")]
    problems = ([f"keys it did not expect: {_some(unexpected)}"] if unexpected else []) + ([f"missing: {_some(missing)}"] if missing else [])
    if problems:
        raise UserError(f"{path} does not fit resnet-deploy's {spec.display_name} (shortcut {spec.shortcut}) as --from {source.name}: {'; '.join(problems)}")
    weights = {}
    for key, name in wanted.items():
        if name not in state:
            weights[key] = torch.zeros(expected[key].shape, dtype=expected[key].dtype)
            continue
        tensor = state[name]
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, resnet-deploy's {spec.display_name} needs {tuple(expected[key].shape)}",
                hint=_shape_hint(name, tensor),
            )
        if tensor.is_floating_point() != expected[key].is_floating_point():
            raise UserError(f"{path}: {name} is a {tensor.dtype} tensor, resnet-deploy's {key} is {expected[key].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: {name} holds NaN or infinite values (a diverged training run?)")
        weights[key] = tensor.to(expected[key].dtype).clone()  # half-precision files become float32
    return weights


def _shape_hint(name: str, tensor: torch.Tensor) -> str:
    if name == "conv1.weight" and tensor.ndim == 4 and tensor.shape[-1] != 3:
        return (f"a {tensor.shape[-2]}x{tensor.shape[-1]} stem is ImageNet's (with stride 2 and a max-pool): a different function "
                "from the CIFAR stem (3x3 stride 1, no max-pool) resnet-deploy models; such a model cannot be imported")
    return "a wider or narrower variant than the project's published models: resnet-deploy models the published widths only"


def _move_padding_after_identity(weights: dict[str, torch.Tensor], blocks: list[int]) -> dict[str, torch.Tensor]:
    """Renumber channels so that resnet-deploy's option-A shortcut computes akamaster's.

    akamaster's shortcut is ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``: the
    identity lands in the middle channels, zeros on both sides; resnet-deploy's puts it first, zeros
    after. A stage's residual stream is only added, normalised and ReLU'd channel by channel, so giving
    its channels other numbers is exact: each layer that writes the stream (every block's conv2 and bn2)
    gets its output channels in resnet-deploy's order, each that reads it (conv1, the classifier) its
    input channels. ``order[i]`` is the akamaster channel that resnet-deploy's channel i holds.
    """
    import torch

    order = torch.arange(weights["bn1.weight"].numel())  # the stem writes the first stage's stream: no padding yet
    for stage, count in enumerate(blocks):
        reads = order
        width = weights[f"layers.{stage}.0.bn2.weight"].numel()
        if width != len(order):
            identity = order + (width - len(order)) // 2  # planes // 4 zero channels before the identity
            taken = set(identity.tolist())
            padding = torch.tensor([c for c in range(width) if c not in taken], dtype=torch.long)
            order = torch.cat([identity, padding])
        for block in range(count):
            prefix = f"layers.{stage}.{block}."
            weights[prefix + "conv1.weight"] = weights[prefix + "conv1.weight"][:, reads if block == 0 else order]
            for name in ("conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"):
                weights[prefix + name] = weights[prefix + name][order]
    weights["fc.weight"] = weights["fc.weight"][:, order]
    return weights


# --------------------------------------------------------------------------------------------- import


def _normalization(source: SourceFormat, dataset: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[Normalization, dict]:
    """The project's mean/std for the dataset, each replaced by --mean/--std when given."""
    published = source.normalization.get(dataset)
    if published is None and (mean is None or std is None):
        raise UserError(
            f"{source.project} records no normalisation for {dataset}: pass --mean and --std as the model was trained with",
            hint=f"`resnet-deploy data --dataset {dataset} --data-dir DATA` prints the training set's own mean and std",
        )
    chosen = Normalization(
        tuple(mean) if mean is not None else published.mean, tuple(std) if std is not None else published.std
    )
    values = chosen.mean + chosen.std
    if not (len(chosen.mean) == len(chosen.std) == 3 and all(math.isfinite(v) for v in values) and min(chosen.std) > 0):
        raise UserError(f"--mean and --std need 3 finite numbers each, std above 0; got mean {list(chosen.mean)}, std {list(chosen.std)}")
    origin = {"mean": "--mean" if mean is not None else source.project, "std": "--std" if std is not None else source.project}
    return chosen, origin


def import_checkpoint(
    source_path: str | Path,
    output: str | Path,
    source_format: str = "auto",
    model: str | None = None,
    dataset: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict:
    """Write the checkpoint of another project as a resnet-deploy checkpoint; return what was done."""
    from .checkpoint import save_checkpoint
    from .models import ModelSpec

    source_path, output = Path(source_path), Path(output)
    if output.exists() and source_path.exists() and output.resolve() == source_path.resolve():
        raise UserError(f"-o {output} is the source file: importing writes a new checkpoint, choose another path")
    state, beside = _state_dict_in(torch_load_safe(source_path, "source checkpoint"), source_path)
    source, chosen_by = _choose_format(state, source_format.lower(), source_path)
    log.info(f"format {source.name} ({source.project}), chosen by {chosen_by}")
    blocks, bottleneck = _architecture(state)
    name = _model_name(blocks, bottleneck, source_path)
    _check_requested_model(name, model, blocks, bottleneck, source_path)
    num_classes, dataset = _dataset_for(state, source, dataset, source_path)
    zero_padding = source.pads_both_sides and not any(f".{source.projection}." in key for key in state)
    spec = ModelSpec(name, num_classes, plain=False, shortcut="A" if zero_padding else "B")
    weights = _weights_for(spec, state, source, source_path)
    if zero_padding:
        weights = _move_padding_after_identity(weights, blocks)
    normalization, normalization_from = _normalization(source, dataset, mean, std)
    record = {
        "format": source.name, "project": source.project, "chosen_by": chosen_by, "file": str(source_path),
        "sha256": sha256_file(source_path), "saved_beside_weights": beside, "normalization_from": normalization_from,
        "note": source.note,
    }  # fmt: skip
    save_checkpoint(output, {
        "model": spec.to_dict(), "state_dict": weights, "normalization": normalization.to_dict(),
        "dataset": {"name": dataset, "classes": DATASET_CLASSES[dataset], "train_size": None, "test_size": None,
                    "source": f"{source.project}'s training data (imported from {source_path.name})"},
        "import": record,
    })  # fmt: skip
    return {"checkpoint": str(output), **record, "model": spec.to_dict(), "dataset": dataset, "normalization": normalization.to_dict()}
