"""What a measurement ran on: hardware, threads and package versions, recorded with every result.

Two records, one source: :func:`environment_info` (flat: the ``environment`` of the benchmarks/*.py
scripts' JSON) and :func:`collect_environment` (``hardware`` and ``software``: the bench results
document, see ``report.RESULTS_SCHEMA``). Their keys are part of those files' formats.
"""

from __future__ import annotations

import os
import platform
import sys
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


def memory_gb() -> float | None:
    """Installed memory in GiB (one decimal; Linux /proc/meminfo), else None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpus() -> list[dict]:
    """Every visible CUDA GPU: name, compute capability, memory in GiB (one decimal); [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append({"name": props.name, "compute_capability": f"{props.major}.{props.minor}", "memory_gb": round(props.total_memory / 2**30, 1)})
    return found


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
    visible = gpus()
    if visible:
        first = visible[0]
        info["gpu"] = {
            "name": first["name"],
            "compute_capability": first["compute_capability"],
            "memory_gib": first["memory_gb"],
            "count": len(visible),
            "cuda": torch.version.cuda,
        }
    return info


def collect_environment() -> dict:
    """Hardware and software the figures were measured on: the bench results' ``hardware`` and
    ``software`` sections."""
    return {"hardware": hardware_info(), "software": software_info()}


def hardware_info() -> dict:
    """CPU model, logical CPUs, physical cores and affinity, memory, platform, load average, GPUs."""
    from .backends.base import physical_cores

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": memory_gb(),
        "platform": platform.platform(),
        # Other processes competing for the cores distort CPU figures: recorded so a reader can judge.
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": gpus(),
    }


def software_info() -> dict:
    """Versions of Python, torch (and its threads, CUDA), numpy, ONNX Runtime (and its providers),
    TensorRT ({flavour, version} or None), OpenVINO and resnet_deploy."""
    import numpy
    import torch

    from . import __version__
    from .backends.openvino import openvino_version

    software = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "numpy": numpy.__version__,
        "onnxruntime": None,
        "onnxruntime_providers": [],
        "tensorrt": None,
        "openvino": None,
    }
    try:
        import onnxruntime

        software["onnxruntime"] = onnxruntime.__version__
        software["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        from .backends.tensorrt import tensorrt_version

        software["tensorrt"] = tensorrt_version()
    except Exception:  # noqa: BLE001 - absent TensorRT is normal; the rows say why they were skipped
        pass
    software["openvino"] = openvino_version()
    software["resnet_deploy"] = __version__
    return software
