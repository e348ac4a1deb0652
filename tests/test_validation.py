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


def test_model_spec_with_a_shortcut_that_is_not_a_string_names_the_field():
    spec = {"name": "resnet20", "num_classes": 10, "plain": False}
    assert model_spec_problems({**spec, "shortcut": 5}) == ["'model.shortcut' is not a string"]
    assert model_spec_problems({**spec, "shortcut": None}) == []


def test_checkpoint_payload_without_a_required_field_names_it(tmp_path):
    payload = _payload()
    del payload["dataset"]
    with pytest.raises(ValueError, match="checkpoint payload lacks 'dataset'"):
        checkpoint.save_checkpoint(tmp_path / "c.pt", payload)
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("normalization", {"mean": [0.5] * 3, "std": [0.0] * 3}, "'normalization' is not {mean: 3 numbers, std: 3 positive numbers}"),
        ("dataset", ["synthetic"], "'dataset' is not a dict"),
    ],
)
def test_checkpoint_with_a_malformed_field_is_refused_with_exactly_that_problem(tmp_path, field, value, problem):
    checkpoint.save_checkpoint(tmp_path / "c.pt", {**_payload(), field: value})
    with pytest.raises(UserError) as refused:
        checkpoint.read_checkpoint(tmp_path / "c.pt")
    assert str(refused.value) == f"checkpoint {tmp_path / 'c.pt'} is malformed: {problem}"


def test_train_config_error_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    """A validation error with no text still gives a readable problem (not an IndexError, not 'NoneType')."""
    from resnet_deploy.train_config import TrainConfig

    def refuse(self):
        raise ValueError()

    monkeypatch.setattr(TrainConfig, "validate", refuse)
    checkpoint.save_checkpoint(tmp_path / "c.pt", {**_payload(), "train_config": {}})
    with pytest.raises(UserError, match=r"'train_config' is not a valid training configuration \(ValueError\)$"):
        checkpoint.read_checkpoint(tmp_path / "c.pt")


def test_loaded_checkpoint_records_its_path_and_a_late_misfit_names_the_last_mismatch(tmp_path, monkeypatch):
    """``load_checkpoint`` loads the weights into a model built anew: should that model differ from the one
    the weights were checked against, the refusal quotes torch's last line (a mismatch, not its header)."""
    path = tmp_path / "c.pt"
    checkpoint.save_checkpoint(path, _payload())
    loaded = checkpoint.load_checkpoint(path)
    assert loaded.path == path and loaded.spec.name == "resnet20"
    builds = []

    def build_then_another(spec):  # the weights check builds first (on meta), the load second
        builds.append(spec)
        return build_model(spec if len(builds) == 1 else ModelSpec("resnet20", num_classes=7))

    monkeypatch.setattr(checkpoint, "build_model", build_then_another)
    with pytest.raises(UserError) as refused:
        checkpoint.load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {path} does not fit model resnet20: size mismatch for fc.bias")
    assert "\n" not in message and "Error(s) in loading" not in message
