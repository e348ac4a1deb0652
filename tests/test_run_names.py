"""Run names (resnet_deploy/run_names.py): the folder-name rules every stage checks, and the default
names quantize and export take from a checkpoint's path (README's calibration/r20-tensorrt, exports/r20)."""

from __future__ import annotations

import pytest

from resnet_deploy.errors import UserError
from resnet_deploy.run_names import check_export_name, check_run_name, export_run_name, quantize_run_name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", None])
def test_check_run_name_refuses_anything_but_one_folder(name):
    with pytest.raises(UserError, match="--run-name must be a plain folder name"):
        check_run_name(name, "--run-name")


def test_check_run_name_returns_a_plain_name_and_names_the_option_by_default():
    assert check_run_name("r20 b1") == "r20 b1"
    with pytest.raises(UserError, match="^--name must be a plain folder name, got 'a/b'$"):
        check_run_name("a/b")


@pytest.mark.parametrize("name", ["r20 b1", "-r", ".hidden", "a/b"])
def test_check_export_name_is_stricter(name):
    with pytest.raises(UserError, match="must be letters, digits"):
        check_export_name(name)


@pytest.mark.parametrize(
    "checkpoint, target, qat, expected",
    [
        ("runs/r20/best.pt", "tensorrt", False, "r20-tensorrt"),
        ("runs/r20/last.pt", "cpu", True, "r20-cpu-qat"),
        ("zoo/checkpoints/r20.pt", "tensorrt", False, "r20-tensorrt"),  # what pretrained:NAME resolves to
        ("runs/r20/epoch5.pt", "tensorrt", False, "epoch5-tensorrt"),  # only train's file names take the folder
        ("best.pt", "cpu", False, "best-cpu"),  # no folder to take
    ],
)
def test_quantize_run_name(checkpoint, target, qat, expected):
    assert quantize_run_name(checkpoint, target, qat) == expected


@pytest.mark.parametrize(
    "checkpoint, expected",
    [
        ("runs/r20/best.pt", "r20"),
        ("runs/r20/epoch5.pt", "r20"),  # any file: the folder names the run unless generic
        ("zoo/checkpoints/r20.pt", "r20"),
        ("runs/my model.pt", "my-model"),  # made to pass check_export_name
        ("runs/+++.pt", "resnet20"),  # nothing usable left: the model's name
    ],
)
def test_export_run_name(tmp_path, checkpoint, expected):
    assert export_run_name(tmp_path / checkpoint, "resnet20") == expected
