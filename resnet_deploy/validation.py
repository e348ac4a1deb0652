"""Field checks for the files resnet-deploy reads back: checkpoints, manifests, sidecars, registries.

Those files may come from elsewhere, be damaged, or be edited by hand. Each reader validates the
fields it (or a later stage) uses with these helpers, so that a wrong value is refused with a message
naming the field (``UserError``, exit code 2) instead of failing later as a ``KeyError`` or
``TypeError`` traceback. Torch-free: the CLI and the JSON readers import it cheaply.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

from .errors import UserError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMPUTE_CAPABILITY = re.compile(r"[0-9]{1,3}\.[0-9]{1,2}")


def is_int(value: Any, low: int | None = None, high: int | None = None) -> bool:
    """An int (not a bool, which is one in Python) within ``low..high`` when given."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def is_compute_capability(value: Any) -> bool:
    """``"8.6"``, ``"12.0"``: how resnet-deploy writes a compute capability."""
    return isinstance(value, str) and _COMPUTE_CAPABILITY.fullmatch(value) is not None


def is_text(value: Any) -> bool:
    """A non-empty string a path can be made of (no NUL byte, which no file system accepts)."""
    return isinstance(value, str) and value != "" and "\0" not in value


def is_file_name(value: Any) -> bool:
    """A path relative to the folder holding the file, that stays inside it (no ``..``, not absolute)."""
    if not is_text(value) or "\\" in value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts and path.parts != ()


def is_dict_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def normalization_ok(value: Any) -> bool:
    """``{"mean": 3 finite numbers, "std": 3 positive finite numbers}``."""
    if not isinstance(value, dict):
        return False
    mean, std = value.get("mean"), value.get("std")
    if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3):
        return False
    return all(is_number(v) for v in [*mean, *std]) and all(v > 0 for v in std)


# A class count past this is no classifier resnet-deploy builds (and torch's shape arithmetic
# overflows long before memory would run out): refused as malformed, before any model is built.
MAX_CLASSES = 2**31 - 1


def model_spec_problems(spec: Any, field: str = "model") -> list[str]:
    """What is wrong with a stored model spec (``ModelSpec.to_dict()``); [] when nothing is."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return [f"'{field}' is not a model spec"]
    problems = []
    if not is_int(spec.get("num_classes")):
        problems.append(f"'{field}.num_classes' is not an integer")
    elif not is_int(spec["num_classes"], 2, MAX_CLASSES):
        problems.append(f"'{field}.num_classes' is {spec['num_classes']}, not in 2..{MAX_CLASSES}")
    if not isinstance(spec.get("plain", False), bool):
        problems.append(f"'{field}.plain' is not true or false")
    if spec.get("shortcut") is not None and not isinstance(spec["shortcut"], str):
        problems.append(f"'{field}.shortcut' is not a string")
    return problems


class Fields:
    """Collects what is wrong with the fields of one document, then refuses it with all of them.

    For example::

        fields = Fields("engine sidecar x.engine.json")
        engine = fields.dict(doc, "engine")      # {} (and the problem noted) when not an object
        fields.check(is_sha256(engine.get("sha256")), "engine.sha256", "a sha256 hex digest")
        fields.raise_if_any()                    # UserError naming every problem found
    """

    def __init__(self, where: str, hint: str | None = None) -> None:
        self.where = where
        self.hint = hint
        self.problems: list[str] = []

    def check(self, ok: bool, field: str, expected: str) -> bool:
        if not ok:
            self.problems.append(f"'{field}' is not {expected}")
        return ok

    def dict(self, document: dict, key: str, field: str | None = None, optional: bool = False) -> dict:
        """``document[key]`` when it is a dict; else {} with the problem noted (absent and ``optional``: no problem)."""
        value = document.get(key)
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"'{field or key}' is not an object" if key in document else f"it lacks '{field or key}'")
            return {}
        return value

    def add(self, problems: list[str]) -> None:
        self.problems.extend(problems)

    def raise_if_any(self) -> None:
        if self.problems:
            shown = self.problems[:6] + ([f"and {len(self.problems) - 6} more"] if len(self.problems) > 6 else [])
            raise UserError(f"{self.where} is malformed: {'; '.join(shown)}", hint=self.hint)
