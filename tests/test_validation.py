"""The shared field checks every reader of a file from elsewhere uses (checkpoints, manifests,
sidecars, the model registry), and the checkpoint format's own guarantees, in-process."""

from __future__ import annotations

import pytest
import torch

from resnet_deploy import checkpoint
from resnet_deploy.errors import UserError
from resnet_deploy.models import ModelSpec, build_model
from resnet_deploy.validation import MAX_CLASSES, Fields, is_text, model_spec_problems


def test_fields_names_the_first_six_problems_and_counts_the_rest():
    """A badly damaged document gives a one-line refusal that stays readable, with the hint."""
    for count, more in [(6, None), (8, "and 2 more")]:
        fields = Fields("manifest m.json", hint="re-export it")
        for i in range(count):
            fields.check(False, f"f{i}", "a number")
        with pytest.raises(UserError) as refused:
            fields.raise_if_any()
        message = str(refused.value)
        assert [f"'f{i}' is not a number" in message for i in range(count)] == [True] * 6 + [False] * (count - 6)
        assert (more is None and "more" not in message) or (more is not None and more in message)
        assert refused.value.hint == "re-export it"
    Fields("manifest m.json").raise_if_any()  # nothing wrong: no refusal


def test_fields_dict_of_an_optional_object():
    fields = Fields("doc")
    assert fields.dict({}, "builder", optional=True) == {} and fields.problems == []
    assert fields.dict({"builder": {"a": 1}}, "builder", optional=True) == {"a": 1}
    assert fields.dict({"builder": [1]}, "builder", optional=True) == {} and fields.problems == ["'builder' is not an object"]


def test_text_fields_refuse_empty_and_nul():
    assert is_text("model.onnx")
    assert not is_text("") and not is_text("a\0b") and not is_text(None)


def test_model_spec_class_count_bounds_are_inclusive():
    spec = {"name": "resnet20", "plain": False, "shortcut": "A"}
    assert model_spec_problems({**spec, "num_classes": 2}) == []
    assert model_spec_problems({**spec, "num_classes": MAX_CLASSES}) == []
    assert model_spec_problems({**spec, "num_classes": 1}) and model_spec_problems({**spec, "num_classes": MAX_CLASSES + 1})


def _payload() -> dict:
    return {"model": ModelSpec("resnet20").to_dict(), "state_dict": build_model(ModelSpec("resnet20")).state_dict(),
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "dataset": {"name": "synthetic"}}  # fmt: skip


def test_saved_checkpoint_carries_format_version_and_digest(tmp_path):
    checkpoint.save_checkpoint(tmp_path / "c.pt", _payload())
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert (raw["format"], raw["version"]) == (checkpoint.FORMAT, checkpoint.VERSION)
    assert checkpoint.read_checkpoint(tmp_path / "c.pt")["version"] == checkpoint.VERSION


def test_checkpoint_with_a_partial_epoch_that_is_not_a_dict_is_refused(tmp_path):
    """``--resume`` reads ``partial`` (the epoch in progress): a crafted one is refused naming it."""
    checkpoint.save_checkpoint(tmp_path / "c.pt", {**_payload(), "partial": [1, 2]})
    with pytest.raises(UserError, match="'partial' is not a dict"):
        checkpoint.read_checkpoint(tmp_path / "c.pt")


def test_checkpoint_with_class_names_that_are_not_names_is_refused(tmp_path):
    """Evaluation labels its output with ``dataset.classes``: a list of anything else is refused."""
    checkpoint.save_checkpoint(tmp_path / "c.pt", {**_payload(), "dataset": {"name": "synthetic", "classes": [1, 2]}})
    with pytest.raises(UserError, match="'dataset.classes'"):
        checkpoint.read_checkpoint(tmp_path / "c.pt")


def test_content_digest_is_stable():
    """Checkpoints written before store this digest and are checked against it on every read: the
    digest of the same content must never change (or every existing checkpoint reads as corrupt)."""
    content = {"b": [1, 1.5, "x", None, True, b"y"], "a": {"t": torch.arange(3, dtype=torch.float32)}}
    assert checkpoint.content_digest(content) == "96d67efa49b2e5c08e301a40af711bed4c4476ecd8aa6cfd4e7a114e27f3e2db"
