"""The CLI keeps torch-free copies of the quantize stage's choice lists (so `--help` starts without
importing torch); they must stay the library's lists."""

from resnet_deploy.cli import quantize_commands
from resnet_deploy.quantize.calibration import METHODS
from resnet_deploy.quantize.quantizer import TARGETS


def test_cli_quantize_choices_are_the_library_lists():
    assert quantize_commands.TARGETS == TARGETS
    assert quantize_commands.METHODS == METHODS
