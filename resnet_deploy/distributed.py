"""Multi-process training under ``torchrun``: DistributedDataParallel on NCCL (GPUs) or gloo (CPU).

One entry point gives a training loop its rank layout; the two loops that run under it are
``resnet-deploy train`` (``train.train``) and ``resnet-deploy quantize --qat`` (``quantize.qat.quantize_qat``,
DDP around the PT2E prepared graph module). A loop uses it so:

    with context_from_environment(config) as dist:     # rank 0 of 1 outside torchrun
        device = dist.device_for(config.device)              # cuda:LOCAL_RANK under torchrun on GPUs
        state = dist.read_on_main(read_checkpoint)           # resume: every rank gets rank 0's checkpoint
        model = dist.wrap(model, config, device)             # DDP (+ synchronised BN with config.sync_bn)
        ... each rank takes rows [rank*B/N, (rank+1)*B/N) of the same global batch B ...
        sums = dist.all_reduce_sum(torch.stack([loss_sum, correct]))   # metrics over all ranks
        if dist.is_main: save the checkpoint, write logs
        dist.barrier()

What torchrun provides, and what is read from it (the environment of each worker process):

``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
    the rank layout and the rendezvous store (``init_process_group(init_method="env://")``).
``TORCHELASTIC_RESTART_COUNT``
    how many times torchrun has restarted the workers (``--max-restarts``): after a restart a loop must
    resume from its last checkpoint even without ``--resume`` (``DistributedContext.restart_count``).
``TORCHELASTIC_MAX_RESTARTS``
    > 0 makes a fresh run checkpoint its starting state at once, so a restart never resumes a stale
    ``last.pt`` left by an earlier run in the same directory.

The backend follows the device: NCCL when the loop trains on CUDA (each process on ``cuda:LOCAL_RANK``),
gloo otherwise. ``--sync-bn`` converts BatchNorm to ``torch.nn.SyncBatchNorm`` on CUDA; PyTorch's
SyncBatchNorm refuses CPU tensors (torch 2.11-2.14: "SyncBatchNorm expected input tensor to be on GPU"),
so on CPU the layers become :class:`AllReduceBatchNorm2d`, the same computation written with
differentiable all-reduces.

Fault injection (tests only): ``RESNET_DEPLOY_FAULT="signal=KILL,rank=1,epoch=1,step=2,restart=0"`` makes
that rank send itself the signal after that optimizer step (epoch and step 0-based, as the trainer's
``on_step`` hook receives them) in that torchrun attempt. ``rank`` may be ``all``; ``restart`` defaults
to 0 so a restarted run does not fail again.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as torch_dist
from torch import nn

from .errors import UserError
from .loop import resolve_device
from .train_config import TrainConfig

log = logging.getLogger(__name__)

FAULT_ENV = "RESNET_DEPLOY_FAULT"
TIMEOUT_ENV = "RESNET_DEPLOY_DIST_TIMEOUT_S"
MAX_TIMEOUT_S = 366 * 24 * 3600
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or anything that sets its variables)."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


@dataclass
class DistributedContext:
    """Rank layout; a single process is rank 0 of 1. :func:`context_from_environment` fills it under
    torchrun, and :class:`ProcessGroupContext` is its form for a process group of more than one rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart_count: int = 0  # torchrun restarts so far: > 0 means resume from last.pt, --resume or not
    max_restarts: int = 0  # restarts torchrun allows: > 0 makes a fresh run checkpoint its starting state
    step_hook: Callable[[int, int], None] | None = None  # called like on_step (test-only fault injection)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def wrap(self, model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
        return model

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        return obj

    def device_for(self, name: str) -> torch.device:
        """The device this rank runs on: ``resolve_device(name)``, and under torchrun on GPUs the
        GPU of its local rank (``cuda:LOCAL_RANK``, whatever index ``name`` gave)."""
        device = resolve_device(name)
        if self.world_size > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def read_on_main(self, read: Callable[[], Any]) -> Any:
        """``read()`` run on rank 0 and its result given to every rank (no shared filesystem needed).
        A :class:`UserError` it raises is raised on every rank, so none waits for a peer that gave up."""
        value, problem = None, None
        if self.is_main:
            try:
                value = read()
            except UserError as exc:
                problem = (exc.args[0], exc.hint)
        value, problem = self.broadcast_object((value, problem))
        if problem is not None:
            raise UserError(problem[0], hint=problem[1])
        return value


@dataclass
class ProcessGroupContext(DistributedContext):
    """A rank of an initialised ``torch.distributed`` process group (world size > 1)."""

    backend: str = "gloo"
    device: torch.device = torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over all ranks (a new tensor; every rank gets it)."""
        total = tensor.detach().clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total

    def wrap(self, model: nn.Module, config: Any, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(model)``; BatchNorm synchronised first when ``config.sync_bn``.

        The BN layers are replaced inside ``model`` itself (its parameters and buffers are the same
        tensors), so the caller keeps using ``model`` for checkpoints, evaluation and the optimizer.
        """
        sync_bn = bool(getattr(config, "sync_bn", False))
        if sync_bn:
            if not any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
                # e.g. a torch.export / PT2E QAT graph, where BatchNorm is an op, not a module
                log.info("--sync-bn: the model has no BatchNorm modules to synchronise; BN statistics stay per rank")
            convert_sync_batchnorm(model, device)
        # With synchronised BN the running statistics are already equal on every rank. Without it
        # each rank's differ; broadcasting rank 0's before each forward keeps every rank holding the
        # model rank 0 checkpoints (train-mode BN normalises with batch statistics, so the broadcast
        # does not change the training itself). torch 2.14 renamed the option; 2.11-2.13 know the old name.
        sync_buffers = not sync_bn
        ddp_parameters = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        buffer_option = "forward_sync_buffers" if "forward_sync_buffers" in ddp_parameters else "broadcast_buffers"
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            **{buffer_option: sync_buffers},
        )

    def barrier(self) -> None:
        if self.backend == "nccl":
            torch_dist.barrier(device_ids=[self.device.index])
        else:
            torch_dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; tensors come back on the CPU they left)."""
        holder = [obj if self.rank == src else None]
        torch_dist.broadcast_object_list(holder, src=src, device=self.device if self.backend == "nccl" else None)
        return holder[0]


@contextlib.contextmanager
def context_from_environment(config: TrainConfig | Any | None = None, *, device: str | None = None) -> Iterator[DistributedContext]:
    """The rank layout of this process, for any training loop.

    Outside torchrun (or under torchrun with one process) this is rank 0 of 1 and nothing is
    initialised. Under torchrun with more processes it initialises the default process group (NCCL
    when the loop's device is CUDA, gloo otherwise), yields a :class:`ProcessGroupContext` and
    destroys the group on exit. ``config`` is anything with a ``device`` attribute (a ``TrainConfig``);
    ``device`` overrides it. The context also carries torchrun's restart count (a
    loop resumes from its last checkpoint when it is > 0) and the test-only fault hook.
    """
    device_name = device or getattr(config, "device", None) or "auto"
    restart_count = _int_env("TORCHELASTIC_RESTART_COUNT")
    max_restarts = _int_env("TORCHELASTIC_MAX_RESTARTS")
    if not under_torchrun() or _int_env("WORLD_SIZE", 1) == 1:
        rank = _int_env("RANK")
        yield DistributedContext(
            restart_count=restart_count,
            max_restarts=max_restarts,
            step_hook=fault_hook_from_environment(rank, restart_count),
        )
        return

    rank, world_size, local_rank = _int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK")
    target = resolve_device(device_name)
    if target.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise UserError(
                f"torchrun started local rank {local_rank} but this node has {visible} visible GPU(s)",
                hint="use --nproc-per-node at most the number of GPUs (or --device cpu for gloo on CPU)",
            )
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    elif target.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"multi-process training supports --device cpu or cuda, not {target.type}")

    already = torch_dist.is_initialized()  # a caller (or an outer loop) owns the group: reuse it
    if not already:
        _init_process_group(backend, rank, world_size, restart_count, target)
    attempt = restart_count
    try:
        # Every rank must agree on whether this launch is a restart (rank 0 decides to resume, and
        # torchrun's count can differ between nodes): take the largest.
        counts = torch.tensor([restart_count], device=target if backend == "nccl" else "cpu")
        torch_dist.all_reduce(counts, op=torch_dist.ReduceOp.MAX)
        restart_count = int(counts.item())
        yield ProcessGroupContext(
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            restart_count=restart_count,
            max_restarts=max_restarts,
            step_hook=fault_hook_from_environment(rank, attempt),
            backend=backend,
            device=target,
        )
    finally:
        if not already and torch_dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer may be gone already; never mask the real error
                torch_dist.destroy_process_group()


def _init_process_group(backend: str, rank: int, world_size: int, restart_count: int, device: torch.device) -> None:
    """``init_process_group`` from torchrun's variables, safe across torchrun restarts.

    torchrun's agent hosts the store the workers rendezvous on (``TORCHELASTIC_USE_AGENT_STORE``) and,
    in torch 2.14, keeps it across ``--max-restarts`` restarts, so a restarted rank can read the address
    a dead rank of the previous attempt published and fail with "Connection refused" (seen here with
    gloo in about half of the restarts; pytorch/pytorch#167288 reports it with NCCL). On one node the
    agent's restart count is the same for every rank, so the keys of each attempt get their own prefix,
    as torch's ``env://`` rendezvous itself did up to 2.3. Across nodes the count can differ, so there the
    plain ``env://`` path is used (see docs/distributed.md: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    """
    options: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size}
    timeout = timeout_from_environment()
    if timeout is not None:
        options["timeout"] = timeout
    if backend == "nccl":
        options["device_id"] = device  # binds the communicator eagerly to this process's GPU
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("GROUP_WORLD_SIZE") == "1":
        agent_store = torch_dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            world_size,
            is_master=False,
            timeout=options.get("timeout", datetime.timedelta(seconds=300)),
        )
        options["store"] = torch_dist.PrefixStore(f"resnet-deploy/attempt-{restart_count}", agent_store)
    else:
        options["init_method"] = "env://"
    torch_dist.init_process_group(**options)


def timeout_from_environment() -> datetime.timedelta | None:
    """The collective-operation timeout ``RESNET_DEPLOY_DIST_TIMEOUT_S`` asks for (0 or unset: torch's
    default). A value ``datetime.timedelta`` cannot hold (near 10**14 s) is refused, not a traceback."""
    timeout_s = _int_env(TIMEOUT_ENV)
    if timeout_s > MAX_TIMEOUT_S:
        raise UserError(f"environment variable {TIMEOUT_ENV}={timeout_s} is more than {MAX_TIMEOUT_S} s (about a year)")
    return datetime.timedelta(seconds=timeout_s) if timeout_s > 0 else None


def _int_env(name: str, default: int = 0) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


# --------------------------------------------------------------------------------- synchronised BN


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients.

    Every rank's loss depends on the reduced value, so d(sum of losses)/d(local input) is the sum of
    all ranks' gradients with respect to the reduced value.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch, on any device.

    Mean and (biased) variance are computed in two passes over all ranks' samples with differentiable
    all-reduces, so the forward and the gradients are those of one BatchNorm over the whole batch; the
    running statistics are updated with the global mean and unbiased variance, as ``nn.BatchNorm2d``
    does for one process. Outside training, or without a process group of more than one rank, it is
    ``nn.BatchNorm2d``. Used for ``--sync-bn`` on CPU, where ``torch.nn.SyncBatchNorm`` refuses to run.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        x = input.float()  # statistics in fp32 even under autocast, as the native kernels keep them
        dims = (0, 2, 3)
        shape = (1, -1, 1, 1)
        local_count = x.new_tensor([x.numel() // x.shape[1]])
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), local_count]))
        count = totals[-1]
        mean = totals[:-1] / count
        centered = x - mean.view(shape)
        variance = _AllReduceSum.apply((centered * centered).sum(dims)) / count
        out = centered * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = variance.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``model`` (in place) by a synchronised one.

    CUDA: ``torch.nn.SyncBatchNorm`` (PyTorch's fused kernels). Other devices:
    :class:`AllReduceBatchNorm2d`. Parameters and buffers are carried over as the same tensors, so
    an optimizer built on ``model`` before the conversion still updates the converted layers.
    Returns ``model`` (or the new module if ``model`` itself is a BatchNorm).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.BatchNorm2d) and not isinstance(model, AllReduceBatchNorm2d):
        converted = AllReduceBatchNorm2d(model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats)
        if model.affine:
            converted.weight = model.weight
            converted.bias = model.bias
        converted.running_mean = model.running_mean
        converted.running_var = model.running_var
        converted.num_batches_tracked = model.num_batches_tracked
        converted.train(model.training)
        return converted
    for name, child in model.named_children():
        replacement = convert_sync_batchnorm(child, device)
        if replacement is not child:
            setattr(model, name, replacement)
    return model


# --------------------------------------------------------------------------------- fault injection


def fault_hook_from_environment(rank: int, restart_count: int) -> Callable[[int, int], None] | None:
    """The ``on_step(epoch, step)`` hook that ``RESNET_DEPLOY_FAULT`` asks for, or None (tests only)."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"{FAULT_ENV}: expected key=value pairs, got {part!r} in {spec!r}")
        fields[key.strip()] = value.strip()
    unknown = set(fields) - {"signal", "rank", "epoch", "step", "restart"}
    if unknown or not {"epoch", "step"} <= set(fields):
        raise UserError(f"{FAULT_ENV}={spec!r}: keys are signal, rank, epoch, step (required), restart")
    try:
        signum = signal.Signals[f"SIG{fields.get('signal', 'KILL').upper().removeprefix('SIG')}"]
        target_rank = fields.get("rank", "0")
        epoch, step, attempt = int(fields["epoch"]), int(fields["step"]), int(fields.get("restart", "0"))
        if target_rank != "all":
            int(target_rank)
    except (KeyError, ValueError):
        raise UserError(f"{FAULT_ENV}={spec!r}: signal is a name (KILL, TERM, INT), rank an integer or 'all'") from None
    if attempt != restart_count or target_rank not in ("all", str(rank)):
        return None

    def inject(current_epoch: int, current_step: int) -> None:
        if (current_epoch, current_step) == (epoch, step):
            # A warning, not a status line: every rank but 0 runs quiet, and the rank that kills itself
            # must still say so.
            log.warning(
                f"fault injection: rank {rank} sends itself {signum.name} after epoch {epoch} step {step} "
                f"(torchrun attempt {restart_count})"
            )
            os.kill(os.getpid(), signum)

    return inject
