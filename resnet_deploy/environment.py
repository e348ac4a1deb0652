"""What a measurement ran on: hardware, threads and package versions, recorded with every result."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment_info() -> dict:
    """CPU model and cores, torch threads, GPU name and compute capability, versions of the stack."""
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "packages": {
            name: _version(name)
            for name in (
                "torch",
                "torchvision",
                "torchao",
                "onnx",
                "onnxruntime",
                "onnxruntime-gpu",
                "onnxsim",
                "onnxslim",
                "tensorrt",
                "tensorrt-rtx-cu13-bindings",
            )
        },
    }
    info["packages"]["torch"] = str(torch.__version__)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return info
