"""Memory: the peak a measurement reached (:class:`_MemoryProbe`) and recognising out-of-memory
errors from any backend, so that an OOM ends a sweep (or fails a row) instead of the benchmark."""

from __future__ import annotations

from ..backends.base import Runner


def _cuda_oom_types() -> tuple[type, ...]:
    import torch

    return tuple({getattr(torch, "OutOfMemoryError", RuntimeError), getattr(torch.cuda, "OutOfMemoryError", RuntimeError)} - {RuntimeError})


_OOM_MARKERS = ("out of memory", "failed to allocate memory", "cuda_error_out_of_memory", "cudaerrormemoryallocation", "bad_alloc")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or an ONNX Runtime / TensorRT error whose message says so."""
    if isinstance(error, _cuda_oom_types()) or isinstance(error, MemoryError):
        return True
    return any(marker in str(error).lower() for marker in _OOM_MARKERS)


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _MemoryProbe:
    """Peak memory over a measurement: torch's CUDA allocator peak on GPUs, process peak RSS on the CPU.

    On Linux the peak RSS is reset first (``/proc/self/clear_refs``), so the figure is the peak during
    the measurement, still including the resident dataset and interpreter.
    """

    def __init__(self, runner: Runner) -> None:
        self.kind = runner.peak_memory_kind()
        self.device = runner.device

    def __enter__(self) -> "_MemoryProbe":
        if self.kind == "cuda_allocated":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        pass

    def peak_mb(self) -> float | None:
        if self.kind == "cuda_allocated":
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except (ImportError, OSError):
            return None
