"""Optimizer and learning-rate scheduler registries: a stage's ``optimizer`` and
``scheduler`` name one entry each, and config.py allows exactly these names.

An optimizer builder takes the trainable parameters, the stage's learning rate and
weight decay, and whether they live on CUDA. A scheduler gives the learning rate of
epoch e (1-based) of a stage, before warm-up: the stage's ``lr`` in epoch 1, then as
its docstring says; ``stage_lr`` adds the warm-up. A new entry is one function and its
name here (tests/test_optim.py asks what it promises). Importing this module does not
import torch (config.py reads the names from it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "Schedule",
    "make_optimizer",
    "stage_lr",
]


class Schedule(Protocol):
    """The fields of a stage (zoo.config.StageConfig) the registries read."""

    optimizer: str
    lr: float
    weight_decay: float
    scheduler: str
    lr_decay: float
    gamma: float
    step_size: int
    milestones: tuple[int, ...]
    epochs: int
    warmup_epochs: int


OptimizerBuilder = Callable[[list, float, float, bool], "torch.optim.Optimizer"]


def _adam(params: list, lr: float, weight_decay: float, cuda: bool) -> torch.optim.Optimizer:
    """torch's Adam (fused on CUDA)."""
    import torch

    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **_fused(cuda))


def _adamw(params: list, lr: float, weight_decay: float, cuda: bool) -> torch.optim.Optimizer:
    """torch's AdamW, decoupled weight decay (fused on CUDA)."""
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **_fused(cuda))


def _sgd(params: list, lr: float, weight_decay: float, cuda: bool) -> torch.optim.Optimizer:
    """torch's SGD with momentum 0.9."""
    import torch

    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)


def _fused(cuda: bool) -> dict[str, bool]:
    return {"fused": True} if cuda else {}


OPTIMIZERS: dict[str, OptimizerBuilder] = {"adam": _adam, "adamw": _adamw, "sgd": _sgd}


def _exponential(stage: Schedule, epoch: int) -> float:
    """lr × lr_decay^(e-1)."""
    return stage.lr * stage.lr_decay ** (epoch - 1)


def _step(stage: Schedule, epoch: int) -> float:
    """lr × gamma^⌊(e-1)/step_size⌋."""
    return stage.lr * stage.gamma ** ((epoch - 1) // stage.step_size)


def _milestones(stage: Schedule, epoch: int) -> float:
    """lr × gamma^(milestones below e)."""
    return stage.lr * stage.gamma ** sum(m < epoch for m in stage.milestones)


def _cosine(stage: Schedule, epoch: int) -> float:
    """lr × (1 + cos(π (e-1) / epochs)) / 2: from lr towards 0 at the stage's end."""
    return stage.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / stage.epochs))


def _constant(stage: Schedule, epoch: int) -> float:
    """lr."""
    return stage.lr


SCHEDULERS: dict[str, Callable[[Schedule, int], float]] = {
    "exponential": _exponential,
    "step": _step,
    "milestones": _milestones,
    "cosine": _cosine,
    "constant": _constant,
}

OPTIMIZER_NAMES = tuple(OPTIMIZERS)  # the allowed values of a stage's optimizer
SCHEDULER_NAMES = tuple(SCHEDULERS)  # the allowed values of a stage's scheduler


def make_optimizer(stage: Schedule, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The stage's optimizer over the model's trainable parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    on_cuda = bool(trainable) and trainable[0].is_cuda
    return OPTIMIZERS[stage.optimizer](trainable, stage.lr, stage.weight_decay, on_cuda)


def stage_lr(stage: Schedule, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based) of ``stage`` under its scheduler; the
    first ``warmup_epochs`` epochs are scaled by e/(warmup_epochs + 1)."""
    lr = SCHEDULERS[stage.scheduler](stage, epoch)
    if epoch <= stage.warmup_epochs:
        lr *= epoch / (stage.warmup_epochs + 1)
    return lr
