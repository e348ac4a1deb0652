#!/usr/bin/env python
"""Every GPU figure of resnet-deploy in one call that fits a lent device's time: the GPU suite.

    bash benchmarks/gpu_suite.sh                  # on the device (installs carried wheels, then this)
    python benchmarks/gpu_suite.py --data .carry/cifar10-jpeg.tar.xz --out "$OUT"
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke   # every stage's code path on the CPU

Stages, in order, each in its own process with its own time box:

``environment``   GPU, driver, clocks (nvidia-smi), torch / CUDA / cuDNN / Triton versions
``data``          decode the CIFAR-10 archive once into the dataset cache
``train-KEY``     ResNet20, ResNet56 (the fast GPU recipe: data resident on the GPU, bf16,
                  channels_last, torch.compile) and ResNet50-CIFAR. A short probe run measures the
                  epoch time first; the run's epoch count is then sized to its training budget (the
                  60-second ResNet20 goal) or to what is left of its box. Time to each accuracy mark
                  comes from the trainer's per-epoch history (metrics.jsonl).
``bench-KEY``     each trained model on the GPU: FP32 eager (TF32 off: the baseline), TF32, FP16 and
                  BF16 autocast, channels_last, CUDA-graph replay, torch.compile (max-autotune when
                  the box has room for it), ONNX Runtime as a reference row; batch 1/32/256, CUDA-event
                  timing, peak memory, parity against FP32 on the full test split
``int8``          PTQ of the GPU-trained ResNet20/56 (calibration on the host CPU) with its accuracy
``tensorrt``      TensorRT rows when ``import tensorrt`` works; otherwise recorded as not runnable

A stage that overruns its box gets SIGTERM (training and benchmarks stop at their next safe point and
keep what they measured), then SIGKILL after a grace period; it is recorded as ``timed_out`` and the
suite goes on. ``results.json`` is rewritten atomically when each stage starts and ends, so a kill
keeps every finished stage. A global deadline (``--deadline``) trims the boxes of late stages so that
the report is always written before the wrapper's ``timeout``.

Output under ``--out`` (at most 8 files): results.json, report.md, time_to_accuracy.png,
latency_resnet20.png, latency_resnet56.png, resnet20.pt, resnet56.pt (weights-only checkpoints), and
the log the wrapper writes (suite.log). ``benchmarks/gpu_results.py`` imports such a folder.

What lives here instead of the library: a PyTorch runner that switches TF32 on for a TF32 row and
compiles with a chosen mode (the library's FP32 runner pins TF32 off; this one subclasses it), and a
CUDA-graph replay runner (the library's CUDA-graph mode is TensorRT's). Everything else (training, evaluation, runners, the benchmark loop, ONNX export, PTQ)
is resnet_deploy's own code.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import io
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnet_deploy.fileio import atomic_path, read_json, write_json  # noqa: E402

RESULTS_FORMAT = "resnet-deploy/gpu-suite"
RESULTS_VERSION = 1
SHIPPED_CHECKPOINT_KEYS = ("model", "state_dict", "normalization", "dataset", "epoch", "step", "train_config",
                           "best_accuracy", "history", "torch_version")
TENSORRT_NOTE = "full TensorRT cannot be installed on the device, and TensorRT-RTX 1.7.1 has no SM90 (Hopper) target"
# Exit status a stage child reports when SIGTERM stopped it at a safe point (as shells report SIGTERM).
STOPPED_EXIT = 128 + signal.SIGTERM


# ============================================================================================ settings


@dataclass
class TrainPlan:
    """One model's training recipe. The epoch count is chosen at run time from a measured probe."""

    key: str  # stage suffix and output name: train-KEY, bench-KEY, KEY.pt
    model: str  # the architecture trained (the smoke run swaps in small ones)
    batch_size: int = 512
    lr: float = 0.4
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    precision: str = "bf16"
    channels_last: bool = True
    compile: bool = True
    max_epochs: int = 200
    train_budget_s: float | None = None  # training time the epochs are sized to; None: the box decides
    probe_steps: int = 20  # optimizer steps per probe epoch (two probe epochs: the second is timed)
    ship: bool = False  # its checkpoint goes to the output folder
    int8: bool = False  # the int8 stage quantizes it


@dataclass
class SuiteSettings:
    """Everything a run decides up front; written to the work folder for the stage processes."""

    mode: str  # "full" or "smoke"
    device: str
    data: str | None  # the CIFAR-10 archive; None in smoke mode (a generated 512-image archive)
    out: str
    work: str
    deadline_s: float  # the whole suite, report included
    report_reserve_s: float  # kept free at the end for the report and plots
    grace_s: float  # between SIGTERM and SIGKILL when a stage overruns
    min_box_s: float  # no stage starts when the deadline leaves less than this
    box_margin_s: float  # each stage keeps this much of its box for its own wind-up
    boxes: dict[str, float]
    plans: list[TrainPlan]
    bench: dict  # resnet_deploy.bench.BenchSettings fields
    half_precision: str  # the half type of the channels_last / graph / compile rows
    compile_backend: str
    compile_dynamic: bool  # one graph for every batch size: fewer compiles to pay for in the box
    autotune_factor: float  # max-autotune runs when the box holds this many times the default compile
    int8_targets: list[str]
    calib_size: int
    accuracy_marks: list[float]
    goal_top1: float
    goal_train_s: float
    eval_batch_size: int
    smoke_train_size: int
    smoke_test_size: int
    cpu_threads: int | None = None  # torch's CPU threads in every stage (None: torch's default)
    cache_dir: str | None = None
    selected: list[str] | None = None  # a subset of the stages (None: all)

    def plan(self, key: str) -> TrainPlan:
        return next(plan for plan in self.plans if plan.key == key)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SuiteSettings":
        return cls(**{**data, "plans": [TrainPlan(**plan) for plan in data["plans"]]})


def full_settings(data: str | None, out: str, work: str, deadline_s: float) -> SuiteSettings:
    """The device run: one H200 (or H100), about 9 minutes in all."""
    return SuiteSettings(
        mode="full",
        device="cuda",
        data=data,
        out=out,
        work=work,
        deadline_s=deadline_s,
        report_reserve_s=15.0,
        grace_s=15.0,
        min_box_s=8.0,
        box_margin_s=6.0,
        boxes={"environment": 30, "data": 90, "train-resnet20": 140, "train-resnet56": 100, "train-resnet50": 45,
               "bench-resnet20": 40, "bench-resnet56": 40, "bench-resnet50": 40, "int8": 40, "tensorrt": 25},
        plans=[
            TrainPlan("resnet20", "resnet20", train_budget_s=60.0, ship=True, int8=True),
            TrainPlan("resnet56", "resnet56", ship=True, int8=True),
            # No compile: compiling the bottleneck network's training graph would take much of its box,
            # and its large convolutions run at cuDNN's speed eagerly.
            TrainPlan("resnet50", "resnet50", batch_size=256, lr=0.2, compile=False, probe_steps=10),
        ],
        bench={"batch_sizes": [1, 32, 256], "include_copies": False, "accuracy_batch_size": 500,
               "warmup_iterations": 10, "warmup_seconds": 0.2, "min_iterations": 50, "min_seconds": 0.3,
               "max_seconds": 1.5, "target_rel_error": 0.01},
        half_precision="fp16",
        compile_backend="inductor",
        compile_dynamic=True,
        autotune_factor=5.0,
        int8_targets=["tensorrt", "cpu"],
        calib_size=1000,
        accuracy_marks=[90.0, 91.0, 91.25],
        goal_top1=91.25,
        goal_train_s=60.0,
        eval_batch_size=1000,
        smoke_train_size=512,
        smoke_test_size=256,
    )


def smoke_settings(out: str, work: str, deadline_s: float) -> SuiteSettings:
    """Every stage's code path on the CPU in a couple of minutes: small models, a 512-image archive,
    few iterations, second-sized boxes. Inductor is replaced by dynamo's eager backend (its CPU compile
    alone would take minutes on two cores); CUDA-graph and fp16 rows are skipped rows on a CPU."""
    settings = full_settings(None, out, work, deadline_s)
    small = dict(batch_size=64, lr=0.1, compile=False, max_epochs=2, probe_steps=2)
    return replace(
        settings,
        mode="smoke",
        device="cpu",
        report_reserve_s=5.0,
        grace_s=5.0,
        min_box_s=1.0,
        box_margin_s=1.0,
        boxes={"environment": 30, "data": 30, "train-resnet20": 40, "train-resnet56": 40, "train-resnet50": 40,
               "bench-resnet20": 60, "bench-resnet56": 60, "bench-resnet50": 60, "int8": 60, "tensorrt": 30},
        plans=[
            TrainPlan("resnet20", "resnet8", ship=True, int8=True, **small),
            TrainPlan("resnet56", "resnet8", ship=True, int8=True, **small),
            TrainPlan("resnet50", "resnet8", **small),
        ],
        bench={"batch_sizes": [1, 8], "include_copies": False, "accuracy_batch_size": 128, "warmup_iterations": 1,
               "warmup_seconds": 0.0, "min_iterations": 3, "min_seconds": 0.0, "max_seconds": 0.2,
               "target_rel_error": 1.0},
        half_precision="bf16",
        compile_backend="eager",
        int8_targets=["tensorrt"],
        calib_size=64,
        eval_batch_size=256,
        # One thread: on a shared CPU, a second OpenMP thread waiting for its core stalls every op.
        cpu_threads=1,
    )


def stage_names(settings: SuiteSettings) -> list[str]:
    names = ["environment", "data"]
    names += [f"train-{plan.key}" for plan in settings.plans]
    names += [f"bench-{plan.key}" for plan in settings.plans]
    names += ["int8", "tensorrt"]
    return [name for name in names if settings.selected is None or name in settings.selected]


# ============================================================================================ the parent


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def log(message: str) -> None:
    print(f"[gpu-suite {time.strftime('%H:%M:%S')}] {message}", flush=True)


class SuiteStop:
    """SIGTERM/SIGINT to the suite itself (the wrapper's timeout): the stage running is stopped and
    recorded as interrupted, and the report is written before exiting."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_number = signum


def new_results(settings: SuiteSettings, command: list[str]) -> dict:
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "mode": settings.mode,
        "created": now_iso(),
        "finished": None,
        "command": command,
        "settings": settings.to_dict(),
        "elapsed_s": 0.0,
        "stopped_by": None,
        "stages": [{"name": name, "status": "pending", "reason": None, "box_s": settings.boxes.get(name)} for name in stage_names(settings)],
    }


def write_results(results: dict, settings: SuiteSettings) -> None:
    """results.json and report.md, each replaced atomically: a kill at any moment keeps a whole file."""
    from gpu_results import render_report

    write_json(Path(settings.out) / "results.json", results)
    with atomic_path(Path(settings.out) / "report.md") as tmp:
        tmp.write_text(render_report(results), encoding="utf-8")


def time_left(settings: SuiteSettings, started: float) -> float:
    """Seconds the suite's deadline leaves for stages, the report's reserve kept aside."""
    return settings.deadline_s - (time.monotonic() - started) - settings.report_reserve_s


def run_suite(settings: SuiteSettings, command: list[str]) -> dict:
    """Run every stage in order within its box; returns the results (also on disk after each stage)."""
    started = time.monotonic()
    stop = SuiteStop()
    stop.install()
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    Path(settings.work, "stages").mkdir(parents=True, exist_ok=True)
    write_json(Path(settings.work) / "settings.json", settings.to_dict())
    results = new_results(settings, command)
    write_results(results, settings)
    for record in results["stages"]:
        left = time_left(settings, started)
        if stop.signal_number is not None:
            record.update(status="interrupted", reason="not started: the suite was stopped by a signal")
        elif left < settings.min_box_s:
            record.update(status="skipped", reason=f"not started: {max(left, 0):.0f} s left before the suite's deadline")
        else:
            run_stage(record, min(float(settings.boxes[record["name"]]), left), settings, results, stop)
            after_stage(record, settings)
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        write_results(results, settings)
    results["stopped_by"] = signal.Signals(stop.signal_number).name if stop.signal_number else None
    finish_outputs(results, settings)
    results["finished"] = now_iso()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    write_results(results, settings)
    return results


def run_stage(record: dict, box: float, settings: SuiteSettings, results: dict, stop: SuiteStop) -> None:
    """One stage in a child process, supervised against its box; the record says how it ended."""
    name = record["name"]
    result_path = Path(settings.work, "stages", f"{name}.json")
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--work", settings.work, "--box", f"{box:.1f}"]
    log(f"{name}: starting (box {box:.0f} s)")
    tic = time.monotonic()
    child = subprocess.Popen(command, env=child_env(settings), preexec_fn=child_setup)
    record.update(status="running", box_s=round(box, 1), started=now_iso(), pid=child.pid)
    write_results(results, settings)
    ending = supervise(child, box, settings.grace_s, stop)
    record.pop("pid", None)
    record["wall_s"] = round(time.monotonic() - tic, 1)
    record["exit_code"] = child.returncode
    reported = read_json(result_path) if result_path.is_file() else {}
    record["result"] = {k: v for k, v in reported.items() if k not in ("status", "reason")}
    record.update(classify_ending(ending, child.returncode, reported, box, settings.grace_s))
    log(f"{name}: {record['status']} after {record['wall_s']} s" + (f" ({record['reason']})" if record["reason"] else ""))


def child_env(settings: SuiteSettings) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if settings.cache_dir:
        env["RESNET_DEPLOY_CACHE"] = settings.cache_dir
    return env


def child_setup() -> None:
    """In the child before exec: its own process group (so that its compile workers can be ended with
    it) and SIGKILL when the suite dies, so that no stage outlives a killed suite on the GPU."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(child: subprocess.Popen, box: float, grace: float, stop: SuiteStop) -> str:
    """Wait for ``child``; past its box (or when the suite is stopped) send SIGTERM, then SIGKILL the
    whole process group after ``grace``. Returns "exited", "timed_out" or "interrupted"."""
    deadline = time.monotonic() + box
    ending = "exited"
    while child.poll() is None:
        if stop.signal_number is not None or time.monotonic() >= deadline:
            ending = "interrupted" if stop.signal_number is not None else "timed_out"
            # Stopped from outside, the suite itself has only seconds before the wrapper's SIGKILL.
            stop_child(child, grace if ending == "timed_out" else min(grace, 5.0))
            break
        time.sleep(0.1)
    return ending


def stop_child(child: subprocess.Popen, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # the child's group: it and any compile workers it started
    child.wait()


def classify_ending(ending: str, exit_code: int, reported: dict, box: float, grace: float) -> dict:
    """Status and reason of a finished stage, from how it ended and what it reported."""
    if ending == "timed_out":
        how = {0: "stopped at a safe point after SIGTERM", STOPPED_EXIT: "stopped at a safe point after SIGTERM",
               -signal.SIGTERM: "ended by SIGTERM before it could stop at a safe point"}.get(
                   exit_code, f"killed after the {grace:.0f} s grace (exit {exit_code})")
        return {"status": "timed_out", "reason": f"ran past its {box:.0f} s box; {how}"}
    if ending == "interrupted":
        return {"status": "interrupted", "reason": "the suite was stopped by a signal while this stage ran"}
    if exit_code == 0:
        return {"status": reported.get("status", "ok"), "reason": reported.get("reason")}
    reason = reported.get("reason") or f"exit code {exit_code}" + (" (killed by a signal)" if exit_code < 0 else "")
    return {"status": "failed", "reason": reason}


def after_stage(record: dict, settings: SuiteSettings) -> None:
    """What the parent adds from the files a stage left: training curves (also of a run cut short)
    and the shipped checkpoints."""
    kind, _, key = record["name"].partition("-")
    if kind != "train":
        return
    metrics = Path(settings.work, "train", key, "metrics.jsonl")
    if metrics.is_file():
        record.setdefault("result", {})["summary"] = training_summary(read_history(metrics), settings)
    shipped = Path(settings.work, "ship", f"{key}.pt")
    if record["status"] == "ok" and settings.plan(key).ship and shipped.is_file():
        copy_into(shipped, Path(settings.out) / f"{key}.pt")
        record["result"]["checkpoint"] = f"{key}.pt"


def copy_into(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def finish_outputs(results: dict, settings: SuiteSettings) -> None:
    """Plots and the closing clock reading; each failure is recorded, never fatal to the report."""
    from gpu_results import plot_latency_of, plot_time_to_accuracy

    outputs = results.setdefault("outputs", {})
    results["gpu_after"] = nvidia_smi_query()
    jobs = [("time_to_accuracy.png", lambda path: plot_time_to_accuracy(results, path))]
    jobs += [(f"latency_{plan.key}.png", lambda path, key=plan.key: plot_latency_of(results, key, path))
             for plan in settings.plans if plan.ship]
    for filename, plot in jobs:
        try:
            outputs[filename] = "written" if plot(Path(settings.out) / filename) else "nothing to plot"
        except Exception as exc:  # noqa: BLE001 - a plot must not cost the report
            outputs[filename] = f"failed: {type(exc).__name__}: {exc}"


# ============================================================================================ a stage child


class StageContext:
    """What a stage function gets: settings, its deadline, the stop flag, and an incremental result."""

    def __init__(self, name: str, settings: SuiteSettings, box: float, stop) -> None:
        self.name = name
        self.settings = settings
        self.deadline = time.monotonic() + box - settings.box_margin_s
        self.stop = stop
        self.result: dict = {}
        self.path = Path(settings.work, "stages", f"{name}.json")

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into the result and rewrite it: a killed stage keeps what it reported."""
        self.result.update(fields)
        write_json(self.path, self.result)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def stopped(self) -> bool:
        return self.stop.requested

    def work_dir(self, *parts: str) -> Path:
        path = Path(self.settings.work, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_stage_child(name: str, work: str, box: float) -> int:
    """Entry point of a stage process (``--stage NAME``)."""
    from resnet_deploy.signals import StopRequest

    settings = SuiteSettings.from_dict(read_json(Path(work) / "settings.json"))
    kind, _, key = name.partition("-")
    function = STAGE_FUNCTIONS[kind]
    if settings.cpu_threads:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    with StopRequest() as stop:
        context = StageContext(name, settings, box, stop)
        try:
            outcome = function(context, key) if key else function(context)
        except Exception as exc:  # noqa: BLE001 - the stage's failure is its record, not the suite's end
            first_line = (str(exc).strip().splitlines() or [""])[0]
            context.update(status="failed", reason=f"{type(exc).__name__}: {first_line}", traceback=traceback.format_exc())
            traceback.print_exc()
            return 1
        context.update(**(outcome or {}))
        return STOPPED_EXIT if stop.requested or "stopped" in context.result else 0


# ---------------------------------------------------------------------------------------------- environment


NVIDIA_SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
                     "power.draw", "power.limit", "temperature.gpu", "utilization.gpu", "memory.used", "memory.total")


def nvidia_smi_query() -> dict:
    """The GPU's state as nvidia-smi reads it (clocks in MHz, power in W, memory in MiB), or why not."""
    if shutil.which("nvidia-smi") is None:
        return {"available": False, "reason": "nvidia-smi is not on the PATH"}
    command = ["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits"]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True).stdout
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    gpus = [dict(zip(NVIDIA_SMI_FIELDS, (value.strip() for value in line.split(",")))) for line in output.strip().splitlines()]
    return {"available": True, "read_at": now_iso(), "gpus": gpus, "compute_apps": [line.strip() for line in apps.strip().splitlines() if line.strip()]}


def stage_environment(context: StageContext) -> dict:
    import torch

    from resnet_deploy.bench import collect_environment
    from resnet_deploy.environment import environment_info

    info = {"bench_environment": collect_environment(), "packages": environment_info()["packages"],
            "nvidia_smi": nvidia_smi_query(), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    info["triton"] = package_version("triton")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["device_properties"] = {"name": props.name, "multiprocessors": props.multi_processor_count,
                                     "memory_gib": round(props.total_memory / 2**30, 1),
                                     "l2_cache_mb": round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
                                     "compute_capability": f"{props.major}.{props.minor}"}
    return info


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------- data


def smoke_archive(work: Path, train_size: int, test_size: int) -> Path:
    """A small CIFAR-10-layout archive (PNG, train/<class>/, test/<class>/) of the synthetic set, so
    the smoke run reads data through the same loader as the device run."""
    from PIL import Image

    from resnet_deploy.data import CIFAR10_CLASSES, synthetic_dataset

    path = work / f"smoke-cifar10-{train_size}-{test_size}.tar.gz"  # gzip: quicker to write than xz, read alike
    if path.is_file():
        return path
    synthetic = synthetic_dataset(train_size=train_size, test_size=test_size)
    with atomic_path(path) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as archive:
        for split, images, labels in (("train", synthetic.train_images, synthetic.train_labels),
                                      ("test", synthetic.test_images, synthetic.test_labels)):
            for index, (image, label) in enumerate(zip(images, labels)):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                member = tarfile.TarInfo(f"cifar10-smoke/{split}/{CIFAR10_CLASSES[label]}/{index:05d}.png")
                member.size = buffer.tell()
                buffer.seek(0)
                archive.addfile(member, buffer)
    return path


def load_suite_dataset(settings: SuiteSettings):
    from resnet_deploy.data import load_dataset

    source = settings.data
    if settings.mode == "smoke":
        source = str(smoke_archive(Path(settings.work), settings.smoke_train_size, settings.smoke_test_size))
    return load_dataset("cifar10", source, cache_dir=settings.cache_dir)


def stage_data(context: StageContext) -> dict:
    tic = time.perf_counter()
    dataset = load_suite_dataset(context.settings)
    return {"load_s": round(time.perf_counter() - tic, 2),
            "dataset": {k: v for k, v in dataset.describe().items() if k != "classes"}}


# ---------------------------------------------------------------------------------------------- training


def train_config(plan: TrainPlan, epochs: int, settings: SuiteSettings):
    from resnet_deploy.train import TrainConfig

    return TrainConfig(model=plan.model, epochs=epochs, batch_size=plan.batch_size, lr=plan.lr, nesterov=True,
                       weight_decay=plan.weight_decay, label_smoothing=plan.label_smoothing, schedule="onecycle",
                       precision=plan.precision, channels_last=plan.channels_last, compile=plan.compile,
                       device=settings.device, eval_batch_size=settings.eval_batch_size, seed=0)


def use_cudnn_autotuner(device: str) -> bool:
    """cuDNN picks the fastest convolution algorithm per shape (shapes are fixed here); recorded."""
    import torch

    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    return bool(torch.backends.cudnn.benchmark)


def read_history(metrics_path: Path) -> list[dict]:
    """The trainer's per-epoch rows (metrics.jsonl, rewritten whole after each epoch)."""
    return [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_probe(plan: TrainPlan, dataset, context: StageContext) -> dict:
    """Two short epochs of the real recipe on a subset: the second gives the steady step time, the
    first's excess the compile and warm-up cost. Also times a full test-split evaluation and a
    checkpoint write, the other per-epoch costs of the real run."""
    from resnet_deploy.train import train

    subset = dataset.subset(plan.probe_steps * plan.batch_size, context.settings.eval_batch_size)
    directory = context.work_dir("probe", plan.key)
    tic = time.perf_counter()
    train(train_config(plan, 2, context.settings), subset, directory)
    wall = time.perf_counter() - tic
    first, second = (row["epoch_time_s"] for row in read_history(directory / "metrics.jsonl"))
    step_s = second / plan.probe_steps
    steps_per_epoch = len(dataset.train_images) // plan.batch_size
    return {
        "wall_s": wall,
        "step_s": step_s,
        "epoch_train_s": step_s * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "compile_and_warmup_s": max(0.0, first - second),
        "eval_s": time_full_evaluation(plan, directory / "last.pt", dataset, context.settings),
        "checkpoint_write_s": time_checkpoint_write(directory / "last.pt"),
    }


def time_full_evaluation(plan: TrainPlan, checkpoint: Path, dataset, settings: SuiteSettings) -> float:
    """Seconds of one test-split evaluation as the trainer runs it after each epoch (second of two)."""
    import torch

    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.evaluation import evaluate

    loaded = load_checkpoint(checkpoint, device=settings.device)
    model = loaded.model.to(memory_format=torch.channels_last) if plan.channels_last else loaded.model
    seconds = []
    for _ in range(2):
        tic = time.perf_counter()
        evaluate(model, dataset.test_images, dataset.test_labels, loaded.normalization, settings.eval_batch_size,
                 settings.device, plan.channels_last)
        seconds.append(time.perf_counter() - tic)
    return seconds[-1]


def time_checkpoint_write(checkpoint: Path) -> float:
    from resnet_deploy.checkpoint import read_checkpoint, save_checkpoint

    raw = read_checkpoint(checkpoint)
    target = checkpoint.with_name("write-probe.pt")
    tic = time.perf_counter()
    save_checkpoint(target, raw)
    seconds = time.perf_counter() - tic
    target.unlink()
    return seconds


def plan_epochs(plan: TrainPlan, probe: dict, seconds_left: float) -> dict:
    """The epoch count: the fewest of what the training budget, the box and max_epochs allow.

    Per epoch the real run trains, evaluates the test split and writes up to two checkpoints (best.pt
    and last.pt); once, it compiles (the probe's cold compile is an upper bound: caches are warm now).
    """
    per_epoch = probe["epoch_train_s"] + probe["eval_s"] + 2 * probe["checkpoint_write_s"]
    room = seconds_left - probe["compile_and_warmup_s"]
    limits = {"box": math.floor(room / per_epoch), "max_epochs": plan.max_epochs}
    if plan.train_budget_s is not None:
        limits["train_budget"] = math.floor(plan.train_budget_s / probe["epoch_train_s"])
    limited_by = min(limits, key=limits.get)
    return {"epochs": max(1, limits[limited_by]), "limited_by": limited_by, "limits": limits,
            "predicted_wall_s": probe["compile_and_warmup_s"] + max(1, limits[limited_by]) * per_epoch}


def ship_checkpoint(source: Path, target: Path) -> None:
    """The trained weights without the optimizer state: what a user loads, half the size."""
    from resnet_deploy.checkpoint import read_checkpoint, save_checkpoint

    raw = read_checkpoint(source)
    save_checkpoint(target, {key: raw[key] for key in SHIPPED_CHECKPOINT_KEYS if key in raw})


def fresh_dir(path: Path) -> Path:
    """An empty folder: nothing of an earlier run in the same work folder can pass for this run's."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def stage_train(context: StageContext, key: str) -> dict | None:
    from resnet_deploy.train import TrainingInterrupted

    settings = context.settings
    plan = settings.plan(key)
    for part in ("probe", "train"):
        fresh_dir(Path(settings.work, part, key))
    Path(settings.work, "ship", f"{key}.pt").unlink(missing_ok=True)
    context.update(recipe=asdict(plan), cudnn_benchmark=use_cudnn_autotuner(settings.device))
    try:
        return probe_and_train(context, plan)
    except TrainingInterrupted as exc:  # SIGTERM: the trainer saved its state at the batch reached
        return {"stopped": str(exc)}


def probe_and_train(context: StageContext, plan: TrainPlan) -> dict | None:
    from resnet_deploy.train import train

    settings = context.settings
    dataset = load_suite_dataset(settings)
    probe = run_probe(plan, dataset, context)
    context.update(probe=probe)
    if context.stopped:
        return {"stopped": "SIGTERM after the probe"}
    planned = plan_epochs(plan, probe, context.seconds_left())
    config = train_config(plan, planned["epochs"], settings)
    context.update(plan=planned, train_config=config.to_dict())
    directory = Path(settings.work, "train", plan.key)
    tic = time.perf_counter()
    try:
        final = train(config, dataset, directory)
    finally:
        context.update(train_wall_s=time.perf_counter() - tic)
    context.update(final={k: final[k] for k in ("epoch", "test_top1", "best_top1", "train_loss")})
    ship_checkpoint(directory / "last.pt", context.work_dir("ship") / f"{plan.key}.pt")
    return None


def training_summary(history: list[dict], settings: SuiteSettings) -> dict:
    """Time to each accuracy mark (cumulative training seconds at the first epoch reaching it), the
    curve, and the goal's verdict. Epoch 1's time includes compilation; its excess over the median
    epoch is reported so both readings are available."""
    if not history:
        return {"epochs_done": 0}
    cumulative, curve = 0.0, []
    for row in history:
        cumulative += row["epoch_time_s"]
        curve.append({"epoch": row["epoch"], "train_s": round(cumulative, 3), "test_top1": row["test_top1"]})
    later = [row["epoch_time_s"] for row in history[1:]]
    first_excess = history[0]["epoch_time_s"] - statistics.median(later) if later else None
    time_to = {f"{mark:g}": next(({"epoch": p["epoch"], "train_s": p["train_s"]} for p in curve if p["test_top1"] >= mark), None)
               for mark in sorted({*settings.accuracy_marks, settings.goal_top1})}
    goal = time_to[f"{settings.goal_top1:g}"]
    return {
        "epochs_done": len(history),
        "final_top1": history[-1]["test_top1"],
        "best_top1": max(row["test_top1"] for row in history),
        "train_s": round(cumulative, 3),
        "first_epoch_excess_s": first_excess,
        "median_epoch_s": statistics.median(later) if later else history[0]["epoch_time_s"],
        "train_images_per_sec": statistics.median(row["train_images_per_sec"] for row in history),
        "peak_memory_mb": max(row["peak_memory_mb"] for row in history),
        "time_to": time_to,
        "goal": {"top1": settings.goal_top1, "train_s": settings.goal_train_s,
                 "met": goal is not None and goal["train_s"] <= settings.goal_train_s},
        "curve": curve,
    }


# ---------------------------------------------------------------------------------------------- GPU runners


def set_tf32(enabled: bool) -> tuple[bool, bool]:
    """TF32 for cuDNN convolutions and CUDA matmuls; returns the previous (conv, matmul) flags.

    The legacy flags set convolutions and RNNs alike, so torch's own readers stay consistent (its new
    per-op API, mixed with readers of the old flags, raises on torch 2.14)."""
    import torch

    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    return previous


def restore_tf32(previous: tuple[bool, bool]) -> None:
    import torch

    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def suite_runner_classes():
    """The suite's two runner classes, defined on first use so that the parent never imports torch."""
    import torch

    from resnet_deploy.backends import BackendUnavailable, PyTorchRunner

    class ModeRunner(PyTorchRunner):
        """A PyTorchRunner that pins the FP32 math mode for its row (PyTorch's default runs cuDNN
        convolutions in TF32, so an "FP32" row would not be FP32) and compiles with a chosen mode."""

        def __init__(self, model, *, tf32: bool, compile_options: dict | None = None, **options) -> None:
            super().__init__(loader=lambda: copy.deepcopy(model), **options)
            self.tf32 = tf32
            self.compile_options = compile_options
            self._previous_tf32: tuple[bool, bool] | None = None

        def _activate(self) -> None:
            self._previous_tf32 = set_tf32(self.tf32)
            super()._activate()
            if self.compile_options is not None:
                self._model = torch.compile(self._model, **self.compile_options)

        def _deactivate(self) -> None:
            super()._deactivate()
            if self._previous_tf32 is not None:
                restore_tf32(self._previous_tf32)

        def describe(self) -> dict:
            info = super().describe()
            info["tf32"] = self.tf32
            if self.compile_options is not None:
                info["execution"] = f"torch.compile ({', '.join(f'{k}={v}' for k, v in self.compile_options.items())})"
                info["compile"] = dict(self.compile_options)
            return info

    class CudaGraphRunner(ModeRunner):
        """Captures one CUDA graph per input shape and replays it: eager kernels without their launch
        overhead. The input is copied into the graph's static buffer; the output is the graph's."""

        def _activate(self) -> None:
            if not (self.device.startswith("cuda") and torch.cuda.is_available()):
                raise BackendUnavailable(f"CUDA graphs need a CUDA GPU; this row runs on {self.device}")
            super()._activate()
            self._graphs: dict[tuple, tuple] = {}

        def _deactivate(self) -> None:
            self._graphs = {}
            super()._deactivate()

        def _autocast(self):
            # Autocast's cast cache would hold tensors freed after capture: caching off, as torch's
            # CUDA-graph notes require.
            if self.precision in ("fp16", "bf16"):
                dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
                return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=False)
            return super()._autocast()

        def run_prepared(self, staged):
            key = tuple(staged.shape)
            if key not in self._graphs:
                self._graphs[key] = self._capture(staged)
            graph, static_input, static_output = self._graphs[key]
            static_input.copy_(staged)
            graph.replay()
            return static_output

        def _capture(self, example) -> tuple:
            static_input = example.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up off the capture: cuDNN's autotuner and the allocator settle
                    super().run_prepared(static_input)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = super().run_prepared(static_input)
            return graph, static_input, static_output

        def describe(self) -> dict:
            return {**super().describe(), "cuda_graph": True, "execution": "CUDA graph replay of eager kernels"}

    return ModeRunner, CudaGraphRunner


@dataclass(frozen=True)
class RowSpec:
    """One benchmark row: a PyTorch configuration named by what it changes against the baseline."""

    name: str
    precision: str
    tf32: bool = False
    channels_last: bool = False
    cuda_graph: bool = False
    compile_mode: str | None = None  # None: eager


def row_specs(half: str) -> dict[str, list[RowSpec]]:
    """The rows in their groups. Each group is one run_benchmark call with the baseline first, so a
    stage killed during a long compile keeps the groups before it; the baseline measured in every
    group also shows the run-to-run spread."""
    baseline = RowSpec("pytorch-fp32", "fp32")
    return {
        "eager": [baseline, RowSpec("pytorch-tf32", "fp32", tf32=True), RowSpec("pytorch-fp16", "fp16"),
                  RowSpec("pytorch-bf16", "bf16"), RowSpec(f"pytorch-{half}-channels-last", half, channels_last=True),
                  RowSpec(f"pytorch-{half}-channels-last-cudagraph", half, channels_last=True, cuda_graph=True)],
        "compile": [baseline, RowSpec(f"pytorch-{half}-channels-last-compile", half, channels_last=True, compile_mode="default")],
        "max-autotune": [baseline, RowSpec(f"pytorch-{half}-channels-last-compile-max-autotune", half, channels_last=True,
                                           compile_mode="max-autotune")],
    }


def build_row(spec: RowSpec, model, settings: SuiteSettings):
    """The runner of ``spec``, or a SkippedRunner with the reason it cannot run on this device."""
    from resnet_deploy.backends import BackendUnavailable, SkippedRunner

    mode_runner, graph_runner = suite_runner_classes()
    options = dict(name=spec.name, precision=spec.precision, device=settings.device, channels_last=spec.channels_last, tf32=spec.tf32,
                   threads=settings.cpu_threads)
    if spec.compile_mode is not None:
        options["compile_options"] = compile_options(spec.compile_mode, settings)
    try:
        return (graph_runner if spec.cuda_graph else mode_runner)(model, **options)
    except BackendUnavailable as exc:  # fp16 on a CPU
        return SkippedRunner(spec.name, "pytorch", spec.precision, settings.device, str(exc))


def compile_options(mode: str, settings: SuiteSettings) -> dict:
    options: dict = {"dynamic": settings.compile_dynamic}
    if settings.compile_backend == "inductor":
        options["mode"] = mode
    else:  # a smoke run's stand-in backend takes no Inductor mode
        options["backend"] = settings.compile_backend
    return options


def onnxruntime_row(loaded, context: StageContext):
    """ONNX Runtime (the build installed there: CPU) on the FP32 ONNX export: the reference row."""
    from resnet_deploy.backends import OnnxRuntimeRunner, SkippedRunner
    from resnet_deploy.export import ExportInfo, export_onnx

    path = context.work_dir("onnx") / f"{loaded.spec.name}-{context.name}-fp32.onnx"
    info = ExportInfo(spec=loaded.spec.to_dict(), normalization=loaded.normalization.to_dict(), classes=loaded.classes,
                      checkpoint_sha256=loaded.sha256, precision="fp32")
    try:
        # Unsimplified: the device has neither onnxsim nor onnxslim, so this is the graph it runs there too.
        exported = export_onnx(loaded.model, path, info, simplify=False)
    except Exception as exc:  # noqa: BLE001 - an export failure is this row's reason, not the stage's end
        return SkippedRunner("onnxruntime-fp32", "onnxruntime", "fp32", "cpu", f"ONNX export failed: {exc}")
    context.update(onnx_export={"seconds": exported.export_seconds, "simplifier": exported.simplifier, "sha256": exported.sha256})
    return OnnxRuntimeRunner(path, precision="fp32", provider="cpu", threads=context.settings.cpu_threads, sha256=exported.sha256)


def skipped_row(spec: RowSpec, device: str, reason: str) -> dict:
    """A row that was not run, in run_benchmark's row layout."""
    return {"name": spec.name, "backend": "pytorch", "precision": spec.precision, "device": device, "status": "skipped",
            "reason": reason, "settings": {}, "accuracy": None, "latency": []}


# ---------------------------------------------------------------------------------------------- benchmark


def trained_checkpoint(settings: SuiteSettings, key: str) -> Path | None:
    path = Path(settings.work, "train", key, "last.pt")
    return path if path.is_file() else None


def run_group(runners: list, loaded, dataset, context: StageContext) -> dict:
    from resnet_deploy.bench import BenchSettings, run_benchmark

    tic = time.perf_counter()
    measured = run_benchmark(runners, dataset.test_images, dataset.test_labels, loaded.normalization,
                             BenchSettings(**context.settings.bench), stop=context.stop)
    measured["wall_s"] = time.perf_counter() - tic
    return measured


def merge_groups(groups: dict[str, dict]) -> dict:
    """One table of rows: the first group's baseline, every other group's own rows; the baselines of
    all groups are kept aside as repeated measurements of the same configuration."""
    first = next(iter(groups.values()))
    rows = list(first["rows"])
    for measured in list(groups.values())[1:]:
        rows += [row for row in measured["rows"] if row["name"] != measured["baseline"]]
    baselines = {name: next(row for row in m["rows"] if row["name"] == m["baseline"]) for name, m in groups.items() if m["rows"]}
    interrupted = next((m["interrupted"] for m in groups.values() if m.get("interrupted")), None)
    return {"baseline": first["baseline"], "settings": first["settings"], "rows": rows, "interrupted": interrupted,
            "baseline_repeats": baselines, "group_wall_s": {name: m["wall_s"] for name, m in groups.items()}}


def bench_document(merged: dict, loaded, dataset, key: str) -> dict:
    from resnet_deploy.bench import Thresholds, apply_verification, build_results

    results = build_results(merged, run_name=f"gpu-suite {key}",
                            model={"spec": loaded.spec.to_dict(), "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256},
                                   "num_classes": loaded.spec.num_classes},
                            dataset={"name": dataset.name, "split": "test", "size": int(len(dataset.test_images)), "source": dataset.source},
                            extra={"baseline_repeats": merged["baseline_repeats"], "group_wall_s": merged["group_wall_s"]})
    if merged["interrupted"] is None and any(row.get("accuracy") for row in results["rows"]):
        apply_verification(results, Thresholds())
    return results


def stage_bench(context: StageContext, key: str) -> dict | None:
    from resnet_deploy.checkpoint import check_dataset_matches, load_checkpoint

    settings = context.settings
    checkpoint = trained_checkpoint(settings, key)
    if checkpoint is None:
        return {"status": "skipped", "reason": f"no checkpoint: train-{key} left no last.pt"}
    use_cudnn_autotuner(settings.device)
    loaded = load_checkpoint(checkpoint)
    dataset = load_suite_dataset(settings)
    check_dataset_matches(loaded, dataset.classes, dataset.name)
    specs = row_specs(settings.half_precision)
    groups: dict[str, dict] = {}
    extra_rows: list[dict] = []
    for group, group_specs in specs.items():
        if context.stopped:
            break
        if group == "max-autotune" and not autotune_fits(groups, context, extra_rows, group_specs[-1]):
            continue
        runners = [build_row(spec, loaded.model, settings) for spec in group_specs]
        if group == "compile":
            runners.append(onnxruntime_row(loaded, context))
        groups[group] = run_group(runners, loaded, dataset, context)
        save_bench(context, groups, extra_rows, loaded, dataset, key)
    if groups and extra_rows:
        save_bench(context, groups, extra_rows, loaded, dataset, key)
    return None


def save_bench(context: StageContext, groups: dict, extra_rows: list, loaded, dataset, key: str) -> None:
    merged = merge_groups(groups)
    merged["rows"] += extra_rows
    context.update(bench=bench_document(merged, loaded, dataset, key), checkpoint_epoch=loaded.raw.get("epoch"))


def autotune_fits(groups: dict, context: StageContext, extra_rows: list, spec: RowSpec) -> bool:
    """max-autotune compiles far longer than the default mode: run it only when the box still holds
    ``autotune_factor`` times what the default compile group took; otherwise a skipped row says why."""
    default = groups.get("compile")
    needed = context.settings.autotune_factor * default["wall_s"] if default else math.inf
    if context.seconds_left() >= needed:
        return True
    extra_rows.append(skipped_row(spec, context.settings.device, f"did not fit the box: needs about {needed:.0f} s "
                                  f"({context.settings.autotune_factor:g}x the default compile group), {context.seconds_left():.0f} s left"))
    return False


# ---------------------------------------------------------------------------------------------- int8


def stage_int8(context: StageContext) -> dict | None:
    settings = context.settings
    dataset = load_suite_dataset(settings)
    rows = []
    for plan in (plan for plan in settings.plans if plan.int8):
        for target in settings.int8_targets:
            row = {"model": plan.key, "target": target}
            checkpoint = trained_checkpoint(settings, plan.key)
            if checkpoint is None or context.stopped:
                row.update(status="skipped", reason="no checkpoint" if checkpoint is None else "the stage was stopped")
            else:
                row.update(quantize_one(checkpoint, dataset, context.work_dir("int8", f"{plan.key}-{target}"), target, settings))
            rows.append(row)
            context.update(rows=rows)
    return None


def quantize_one(checkpoint: Path, dataset, directory: Path, target: str, settings: SuiteSettings) -> dict:
    """One PTQ run (calibration and evaluation on the host CPU); a failure stays in its row."""
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.quantize import quantize_ptq

    tic = time.perf_counter()
    try:
        metrics = quantize_ptq(load_checkpoint(checkpoint), dataset, directory, target=target, calib_size=settings.calib_size)
    except Exception as exc:  # noqa: BLE001 - torchao missing, a capture failure: the row says which
        return {"status": "failed", "reason": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}
    return {"status": "ok", "wall_s": time.perf_counter() - tic, **int8_figures(metrics)}


def int8_figures(metrics: dict) -> dict:
    return {"fp32_top1": metrics["fp32"]["top1"], "int8_top1": metrics["int8"]["top1"], "delta_top1": metrics["delta_top1"],
            "agreement_top1": metrics["agreement_top1"], "calibration_s": metrics["timings"]["calibration_s"],
            "test_images": metrics["test_images"]}


# ---------------------------------------------------------------------------------------------- TensorRT


def stage_tensorrt(context: StageContext) -> dict | None:
    """TensorRT rows for ResNet20 (FP32 and FP16 engines) when TensorRT imports and a GPU is there;
    otherwise not runnable, with every reason found."""
    from resnet_deploy.errors import UserError
    from resnet_deploy.export import current_gpu, import_tensorrt

    try:
        _, flavour, version = import_tensorrt()
    except UserError as exc:
        reasons = "; ".join(getattr(exc, "reasons", []))
        return {"status": "not_runnable", "reason": f"{TENSORRT_NOTE}; here: {reasons or exc}"}
    context.update(tensorrt={"flavour": flavour, "version": version})
    if current_gpu() is None:
        return {"status": "not_runnable", "reason": f"{flavour} {version} imports, but no CUDA GPU is visible"}
    key = next(plan.key for plan in context.settings.plans if plan.ship)
    checkpoint = trained_checkpoint(context.settings, key)
    if checkpoint is None:
        return {"status": "skipped", "reason": f"no checkpoint: train-{key} left no last.pt"}
    try:
        return tensorrt_rows(context, key, checkpoint)
    except UserError as exc:  # e.g. TensorRT-RTX has no target for this GPU
        return {"status": "not_runnable", "reason": f"{flavour} {version}: {str(exc).splitlines()[0]}"}


def tensorrt_rows(context: StageContext, key: str, checkpoint: Path) -> dict | None:
    from resnet_deploy.backends import TensorRTRunner
    from resnet_deploy.checkpoint import load_checkpoint
    from resnet_deploy.export import ExportInfo, build_engine, export_onnx

    loaded = load_checkpoint(checkpoint)
    dataset = load_suite_dataset(context.settings)
    directory = context.work_dir("tensorrt")
    max_batch = max(context.settings.bench["batch_sizes"] + [context.settings.bench["accuracy_batch_size"]])
    runners = [build_row(row_specs(context.settings.half_precision)["eager"][0], loaded.model, context.settings)]
    for precision in ("fp32", "fp16"):
        info = ExportInfo(spec=loaded.spec.to_dict(), normalization=loaded.normalization.to_dict(), classes=loaded.classes,
                          checkpoint_sha256=loaded.sha256, precision=precision)
        onnx_path = export_onnx(loaded.model, directory / f"{key}-{precision}.onnx", info, simplify=False).path
        engine = directory / f"{key}-{precision}.engine"
        build_engine(onnx_path, engine, precision=precision, min_batch=1, opt_batch=max_batch // 2, max_batch=max_batch)
        runners.append(TensorRTRunner(engine, precision=precision, onnx_path=onnx_path))
    measured = run_group(runners, loaded, dataset, context)
    merged = merge_groups({"tensorrt": measured})
    context.update(bench=bench_document(merged, loaded, dataset, f"{key}-tensorrt"))
    return None


STAGE_FUNCTIONS: dict[str, Callable] = {
    "environment": stage_environment,
    "data": stage_data,
    "train": stage_train,
    "bench": stage_bench,
    "int8": stage_int8,
    "tensorrt": stage_tensorrt,
}


# ============================================================================================ command line


def parse_boxes(pairs: list[str]) -> dict[str, float]:
    boxes = {}
    for pair in pairs:
        name, _, seconds = pair.partition("=")
        if not seconds:
            raise SystemExit(f"--box-of wants STAGE=SECONDS, got {pair!r}")
        boxes[name] = float(seconds)
    return boxes


def settings_from_args(args) -> SuiteSettings:
    out = str(Path(args.out).resolve())
    work = str(Path(args.work or Path(out).parent / (Path(out).name + "-work")).resolve())
    if args.smoke:
        settings = smoke_settings(out, work, args.deadline or 170.0)
        settings.cache_dir = str(Path(work) / "cache")
    else:
        if not args.data or not Path(args.data).is_file():
            raise SystemExit(f"--data must name the CIFAR-10 archive (got {args.data!r})")
        settings = full_settings(str(Path(args.data).resolve()), out, work, args.deadline or 510.0)
    unknown = set(parse_boxes(args.box_of)) - set(stage_names(settings))
    if unknown:
        raise SystemExit(f"--box-of names unknown stages: {', '.join(sorted(unknown))}")
    settings.boxes.update(parse_boxes(args.box_of))
    if args.stages:
        settings.selected = args.stages.split(",")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the CIFAR-10 archive (cifar10-jpeg.tar.xz)")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-suite-out"), help="output folder ($OUT on the device)")
    parser.add_argument("--work", help="scratch folder (default: OUT-work beside the output)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU: every stage's code path")
    parser.add_argument("--deadline", type=float, help="seconds for the whole suite (default 510; smoke 170)")
    parser.add_argument("--box-of", action="append", default=[], metavar="STAGE=SECONDS", help="override a stage's box")
    parser.add_argument("--stages", help="comma-separated subset of the stages, in their usual order")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage (a child process)
    parser.add_argument("--box", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        code = run_stage_child(args.stage, args.work, args.box)
        # Its result is on disk: skip the interpreter's teardown (CUDA context, compile workers), which
        # can take seconds of the box and, past it, turn a finished stage into a killed one.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    settings = settings_from_args(args)
    results = run_suite(settings, [sys.executable, *sys.argv])
    from gpu_results import summary_lines

    print("\n".join(summary_lines(results)), flush=True)
    return 143 if results["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(main())
