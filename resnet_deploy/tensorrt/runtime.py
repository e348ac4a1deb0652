"""Which TensorRT, which GPU: the flavour import, the GPU probe, compute capabilities and the logger.

Every step of the package asks this module (``runtime.import_tensorrt()``, ``runtime.current_gpu()``,
looked up through the module at call time), so a test that fakes TensorRT or the GPU patches one place:
``resnet_deploy.tensorrt.runtime``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import MissingDependencyError, UserError

FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
FLAVOUR_ENV = "RESNET_DEPLOY_TENSORRT_FLAVOUR"  # "tensorrt" or "tensorrt-rtx" to force one
INSTALL_HINT = (
    "pip install tensorrt   (NVIDIA TensorRT, on a machine with an NVIDIA GPU), or "
    'pip install "resnet-deploy[tensorrt]"   (TensorRT-RTX: tensorrt-rtx-cu13-libs and tensorrt-rtx-cu13-bindings, '
    "builds engines without a GPU for --compute-capability)"
)


def import_tensorrt() -> tuple[Any, str, str]:
    """The TensorRT Python module to use: ``(module, flavour, version)``.

    Full TensorRT wins over TensorRT-RTX when both import; ``RESNET_DEPLOY_TENSORRT_FLAVOUR`` set to
    ``tensorrt`` or ``tensorrt-rtx`` forces one. Raises MissingDependencyError (exit 2) naming what to
    install when neither imports.
    """
    forced = os.environ.get(FLAVOUR_ENV, "").strip().lower()
    if forced and forced not in FLAVOURS:
        raise UserError(f"{FLAVOUR_ENV}={forced!r} is not a TensorRT flavour; use one of {', '.join(FLAVOURS)}")
    reasons = []
    for flavour in [forced] if forced else list(FLAVOURS):
        module_name = FLAVOURS[flavour]
        try:
            module = importlib.import_module(module_name)
        except (ImportError, OSError) as exc:  # OSError: the bindings import but their shared libraries do not load
            reasons.append(f"{module_name}: {exc}")
            continue
        return module, flavour, str(getattr(module, "__version__", "unknown"))
    error = MissingDependencyError(forced or "TensorRT", INSTALL_HINT, "building and loading TensorRT engines")
    error.reasons = reasons  # type: ignore[attr-defined]
    raise error


def tensorrt_available() -> tuple[bool, str]:
    """(True, "tensorrt-rtx 1.7.1.116") or (False, why not) without raising."""
    try:
        _, flavour, version = import_tensorrt()
    except UserError as exc:
        return False, str(exc).splitlines()[0]
    return True, f"{flavour} {version}"


def current_gpu() -> dict | None:
    """{"name", "compute_capability": "8.6"} of CUDA device 0, or None without a usable GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # a broken driver is "no GPU" for our purposes
        return None


def parse_compute_capability(text: str) -> str:
    """'8.6', '86', 'sm86', 'SM_86' -> '8.6'."""
    cleaned = str(text).strip().lower().removeprefix("sm").lstrip("_")
    if "." in cleaned:
        major, _, minor = cleaned.partition(".")
    else:
        major, minor = cleaned[:-1], cleaned[-1:]
    if not (major.isdigit() and minor.isdigit()):
        raise UserError(f"--compute-capability {text!r} is not a compute capability; write it like 8.6 or sm86")
    return f"{int(major)}.{int(minor)}"


def rtx_compute_capability(trt, capability: str):
    """TensorRT-RTX's ``ComputeCapability`` member for '8.6'; UserError listing the known ones."""
    name = "SM" + capability.replace(".", "")
    known = [c for c in dir(trt.ComputeCapability) if c.startswith("SM")]
    if name not in known:
        choices = ", ".join(f"{c[2:-1]}.{c[-1]}" for c in known)
        raise UserError(
            f"--compute-capability {capability} is not a target of TensorRT-RTX {trt.__version__}; choose one of {choices}",
            hint="TensorRT-RTX targets RTX GPUs (Turing and later consumer/workstation parts); "
            "for data-centre GPUs such as the H100 (9.0) use full TensorRT on that machine",
        )
    return getattr(trt.ComputeCapability, name)


def make_logger(trt):
    """A TensorRT logger that keeps warnings and errors, so failures can be reported with TensorRT's words."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg) -> None:  # noqa: D401 - TensorRT's callback
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append((str(severity).rsplit(".", 1)[-1], str(msg)))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return CollectingLogger()
