"""The speed settings of a training run: precision, memory format and compilation, each decided for
the device and run length when "auto" (the one place these defaults are decided), with why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import UserError
from .train_config import AUTO, COMPILE_MIN_STEPS, TrainConfig


@dataclass(frozen=True)
class SpeedSettings:
    """The precision, memory format and compilation a run uses, each with why it was chosen."""

    precision: str
    channels_last: bool
    compile: bool
    reasons: dict[str, str]

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with these decided values, as checkpoints and config.json record them."""
        return replace(config, precision=self.precision, channels_last=self.channels_last, compile=self.compile)

    def describe(self) -> str:
        onoff = {True: "on", False: "off"}
        return (
            f"speed settings: precision {self.precision} ({self.reasons['precision']}), "
            f"channels_last {onoff[self.channels_last]} ({self.reasons['channels_last']}), "
            f"compile {onoff[self.compile]} ({self.reasons['compile']})"
        )


def resolve_speed_settings(config: TrainConfig, device: torch.device, total_steps: int) -> SpeedSettings:
    """Decide every "auto" speed option of ``config`` for ``device`` and a run of ``total_steps``.

    The one place these defaults are decided; explicit values are kept (a resumed run's config holds
    the values its first launch decided, so it continues with exactly those).
    """
    given = "as configured"
    if config.precision != "auto":
        precision, precision_reason = config.precision, given
    else:
        precision, precision_reason = _auto_precision(device)
    if config.channels_last is not AUTO:
        channels_last, layout_reason = config.channels_last, given
    else:
        channels_last, layout_reason = _auto_channels_last(device)
    if config.compile is True and (unavailable := compile_unavailable_reason(device)):
        raise UserError(f"--compile cannot work here: {unavailable}", hint="train with --no-compile")
    if config.compile is not AUTO:
        compile_, compile_reason = config.compile, given
    else:
        compile_, compile_reason = _auto_compile(device, total_steps)
    reasons = {"precision": precision_reason, "channels_last": layout_reason, "compile": compile_reason}
    return SpeedSettings(precision, channels_last, compile_, reasons)


def _auto_precision(device: torch.device) -> tuple[str, str]:
    # bf16 needs no loss scaling and converges like fp32; it is only faster where the hardware computes
    # in it natively (elsewhere it is emulated, slower than fp32). fp16 is never chosen for the user.
    if device.type == "cuda":
        if _cuda_has_native_bf16(device):
            return "bf16", "auto: this GPU computes bf16 natively"
        return "fp32", "auto: this GPU has no native bf16"
    if cpu_has_native_bf16():
        return "bf16", "auto: native bf16 on this CPU, AVX512-BF16 or AMX"
    return "fp32", "auto: this CPU has no native bf16"


def _cuda_has_native_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch without the keyword: it counted native support only
            return bool(torch.cuda.is_bf16_supported())


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 on this CPU, by torch's own CPU feature probe, else /proc/cpuinfo.

    Other CPUs (Arm's bf16 included, unmeasured here) count as not native.
    """
    if not torch.backends.mkldnn.is_available():  # bf16 convolutions on CPU are oneDNN's
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # private-ish; absent from older torch
    if capabilities is not None:
        try:
            found = capabilities()
            return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
        except Exception:  # noqa: BLE001 - a probe failure means "unknown", then the next probe
            pass
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _auto_channels_last(device: torch.device) -> tuple[bool, str]:
    # NHWC is what oneDNN's CPU convolutions and the GPU's tensor cores compute in; NCHW input is
    # reordered at every layer (issue #12 on this CPU: +32% img/s in fp32, +11% in bf16).
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 7:
            return True, "auto: this GPU has tensor cores"
        return False, "auto: this GPU has no tensor cores"
    if torch.backends.mkldnn.is_available():
        return True, "auto: oneDNN's convolutions are NHWC"
    return False, "auto: this torch has no oneDNN"


def _auto_compile(device: torch.device, total_steps: int) -> tuple[bool, str]:
    if total_steps < COMPILE_MIN_STEPS:  # checked first: short runs (tests, smoke runs) skip the compiler probe
        return False, f"auto: {total_steps} steps are too few to repay compilation"
    unavailable = compile_unavailable_reason(device)
    if unavailable:
        return False, f"auto: {unavailable}"
    return True, f"auto: {total_steps} steps repay compilation"


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work on ``device`` here, or None when it can."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile does not support this Python"
    except (ImportError, AttributeError):
        return "this torch has no torch.compile"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "Triton is not importable"
        return None if has_triton() else "Triton (Inductor's GPU compiler) is not installed"
    return None if _cpp_compiler() else "no C++ compiler for Inductor (install g++ or set CXX)"


def _cpp_compiler() -> str | None:
    """The C++ compiler Inductor will use, found by Inductor's own search, or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except ImportError:  # an Inductor without cpp_builder: look for what its config names
        import os
        import shutil

        return shutil.which(os.environ.get("CXX", "g++"))
    except Exception:  # noqa: BLE001 - Inductor raises its own InvalidCxxCompiler when none is found
        return None
