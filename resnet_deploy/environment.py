"""What a measurement ran on: hardware, threads and package versions, recorded with every result.

Two records, one source: :func:`environment_info` (flat: the ``environment`` of the benchmarks/*.py
scripts' JSON) and :func:`collect_environment` (``hardware`` and ``software``: the bench results
document, see ``report.RESULTS_SCHEMA``). Their keys are part of those files' formats.
:func:`cpu_snapshot` and :func:`cpu_competition` measure how much CPU other processes took while a
benchmark ran (the bench results' ``hardware.cpu_competition``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Callable


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


# ---------------------------------------------------------------------------------- CPU competition

# Other processes' share of the usable CPUs' time during a measurement above which the report warns
# that CPU figures are lower and noisier than on an idle machine (an idle desktop or CI runner takes
# 1-3 %; one other busy thread on 2 cores takes 50 %).
COMPETITION_WARN_SHARE = 0.10

# Columns of a /proc/stat "cpu" line: user nice system idle iowait irq softirq steal guest guest_nice.
# Busy is everything but idle and iowait; guest time is already inside user. Steal is time a hypervisor
# gave our cores to other machines: competition too.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time counters at one moment: what every process used, and what this one did."""

    wall_seconds: float  # a monotonic clock
    busy_seconds: float  # non-idle time of the usable CPUs, all processes together (/proc/stat)
    own_seconds: float  # user + system time of this process and the children it has waited for
    cpus: int  # usable CPUs the busy time is summed over


def busy_seconds(proc_stat: str, usable: set[int] | None, ticks_per_second: int) -> tuple[float, int]:
    """Busy seconds summed over the ``cpuN`` lines of ``proc_stat`` whose N is in ``usable`` (all of
    them when None), and how many lines that was."""
    total, counted = 0, 0
    for line in proc_stat.splitlines():
        name, *fields = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if usable is not None and int(name[3:]) not in usable:
            continue
        values = [int(v) for v in fields]
        total += sum(values[i] for i in _BUSY_COLUMNS if i < len(values))
        counted += 1
    return total / ticks_per_second, counted


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _read_proc_stat() -> str:
    with open("/proc/stat", encoding="ascii") as handle:
        return handle.read()


def cpu_snapshot(read_proc_stat: Callable[[], str] = _read_proc_stat) -> CpuSnapshot | None:
    """The counters now, or None where they cannot be read (no /proc/stat: not Linux)."""
    try:
        text = read_proc_stat()
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        busy, cpus = busy_seconds(text, usable, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None
    if cpus == 0:
        return None
    return CpuSnapshot(time.monotonic(), busy, _own_cpu_seconds(), cpus)


def cpu_competition(before: CpuSnapshot | None, after: CpuSnapshot | None) -> dict | None:
    """CPU time other processes used between two snapshots, as a share of the usable CPUs' time.

    Other = all busy time minus this process's own (its threads and waited-for children), so the
    benchmark's own load, or a previous stage of the same pipeline that left the load average high,
    does not count. None when either snapshot is missing (unknown).
    """
    if before is None or after is None or after.wall_seconds <= before.wall_seconds:
        return None
    window = after.wall_seconds - before.wall_seconds
    other = max(0.0, (after.busy_seconds - before.busy_seconds) - (after.own_seconds - before.own_seconds))
    share = min(1.0, other / (window * after.cpus))
    return {
        "window_seconds": round(window, 2),
        "cpus": after.cpus,
        "other_cpu_seconds": round(other, 2),
        "other_share": round(share, 4),
        "warn_share": COMPETITION_WARN_SHARE,
        "competing": share > COMPETITION_WARN_SHARE,
    }
