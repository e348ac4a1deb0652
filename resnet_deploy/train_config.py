"""The options of ``resnet-deploy train`` as one dataclass, and the choice lists the CLI offers.

Torch-free on purpose: the CLI builds its options from these lists at import time, and importing
torch there would slow every command, ``--help`` included.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import UserError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")  # what a run can use; a checkpoint records one of these
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user can ask for; train() resolves "auto"
AUTO = None  # channels_last / compile left to train() to decide (see train_speed.resolve_speed_settings)

# Runs shorter than this do not compile under --compile auto: Inductor's warm-up (tens of seconds on
# a 2-core CPU for ResNet20) is repaid at about 0.017 s a step (issue #12: 932 -> 1,063 img/s at batch
# 128), i.e. after roughly a thousand steps. benchmarks/train_throughput.py measures both figures.
COMPILE_MIN_STEPS = 1000


MAX_EPOCHS = 100_000


@dataclass
class TrainConfig:
    """Every option of ``resnet-deploy train``; saved in each checkpoint with the speed settings resolved.

    ``precision="auto"``, ``channels_last=None`` and ``compile=None`` are decided by
    ``train_speed.resolve_speed_settings`` for the device the run lands on; checkpoints and config.json hold
    the decided values, so a resumed run and the recorded recipe use exactly what ran.
    """

    model: str = "resnet20"
    shortcut: str | None = None
    plain: bool = False
    dataset: str = "cifar10"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the run (paper: 32k/48k of 64k its)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool | None = AUTO
    compile: bool | None = AUTO
    device: str = "auto"
    eval_batch_size: int = 1000
    train_subset: int | None = None
    test_subset: int | None = None
    lr_scale: bool = False  # multiply lr by world size (linear scaling rule) under DDP
    sync_bn: bool = False

    def validate(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        # A bound, not a taste: an absurd count (the CLI fuzz draws 2**63) would otherwise start a run
        # that never ends instead of being refused.
        if self.epochs > MAX_EPOCHS:
            raise UserError(f"--epochs must be at most {MAX_EPOCHS:,}, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        # Each float option is checked for NaN/inf too: click accepts "nan" and "inf" as floats, and
        # either would only surface later as a diverged run or a crash inside the optimizer.
        for name, value, low, high, accepted in (
            ("weight-decay", self.weight_decay, 0.0, math.inf, ">= 0"),
            ("momentum", self.momentum, 0.0, 1.0, "in [0, 1)"),
            ("warmup-epochs", self.warmup_epochs, 0.0, math.inf, ">= 0"),
            ("gamma", self.gamma, 0.0, 1.0, "in (0, 1]"),
            ("label-smoothing", self.label_smoothing, 0.0, 1.0, "in [0, 1)"),
        ):
            in_range = math.isfinite(value) and low <= value and (value <= high if name == "gamma" else value < high)
            if not in_range or (name == "gamma" and value == 0):
                raise UserError(f"--{name} must be a finite number {accepted}, got {value}")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise UserError("--nesterov needs --momentum > 0")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"--warmup-epochs ({self.warmup_epochs}) must be less than --epochs ({self.epochs})")
        for name, value, choices in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("precision", self.precision, PRECISION_CHOICES),
        ):
            if value not in choices:
                raise UserError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")
        for name, value in (("channels-last", self.channels_last), ("compile", self.compile)):
            if value not in (True, False, AUTO):
                raise UserError(f"--{name} must be on, off or auto (None), got {value!r}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise UserError(f"--milestones are fractions of the run in (0, 1), got {self.milestones}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Also reads older checkpoints' configs (precision fp32/bf16, channels_last and compile as booleans)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
