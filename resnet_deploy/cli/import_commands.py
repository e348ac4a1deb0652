"""``import``: bring a checkpoint trained with another CIFAR ResNet project."""

from __future__ import annotations

from pathlib import Path

import click

from ..importers import DATASET_CLASSES, FORMAT_CHOICES, FORMATS
from .options import echo_json


def _three_numbers(ctx, param, text: str | None) -> list[float] | None:
    """'0.49,0.48,0.45' -> [0.49, 0.48, 0.45]; the library checks the count and the range."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected 3 comma-separated numbers, got {text!r}") from None


_FORMAT_HELP = "; ".join(f"{source.name}: {source.project}" for source in FORMATS.values())


@click.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--from", "source_format", required=True, type=click.Choice(FORMAT_CHOICES, case_sensitive=False),
              help=f"The project that wrote SOURCE. {_FORMAT_HELP}; auto: recognise it from the keys and shapes.")
@click.option("--model", help="Expected model (resnet20, resnet56, resnet18, ...): a file of another depth is refused [the depth in the file].")
@click.option("--dataset", type=click.Choice(list(DATASET_CLASSES)), help="Classes of SOURCE; a classifier of another width is refused "
              "[from the classifier: 10 outputs cifar10, 100 cifar100].")
@click.option("--mean", callback=_three_numbers, help="Per-channel mean the model was trained with, e.g. 0.4914,0.4822,0.4465 [the project's].")
@click.option("--std", callback=_three_numbers, help="Per-channel std the model was trained with, e.g. 0.2023,0.1994,0.2010 [the project's].")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The resnet-deploy checkpoint to write.")
def import_command(source, source_format, model, dataset, mean, std, output):
    """Import SOURCE, a checkpoint of another CIFAR ResNet project, as a resnet-deploy checkpoint that
    every later stage takes (eval, quantize, export, bench, pipeline --checkpoint).

    The depth comes from the file, the classes from its classifier; the project's normalisation and
    class order are recorded in the checkpoint with the source file's sha256. The file is read with
    weights_only=True: it cannot run code.

    \b
    Examples:
      resnet-deploy import pretrained_models/resnet20-12fca82f.th --from akamaster -o runs/akamaster-r20/best.pt
      resnet-deploy import cifar100_resnet56-f2eff4c8.pt --from chenyaofo -o runs/chenyaofo-c100-r56/best.pt
      resnet-deploy import checkpoint/ckpt.pth --from auto --model resnet18 -o runs/kuangliu-r18/best.pt
      resnet-deploy import resnet50-cifar10.pth --from torchvision --mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616 -o runs/tv-r50/best.pt
      resnet-deploy eval runs/akamaster-r20/best.pt --data-dir ../shared/datasets/cifar10-jpeg.tar.xz
    """
    from ..importers import import_checkpoint

    echo_json(import_checkpoint(source, output, source_format, model=model, dataset=dataset, mean=mean, std=std))


COMMANDS = [import_command]
