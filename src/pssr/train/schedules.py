"""Learning-rate schedules and optimizers of :func:`pssr.train.loop.fit`.

A schedule is the lr multiplier as a pure function of (step, total steps, warmup share), so the
"scheduler state" of a checkpoint is one integer, the global step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from pssr.registry import Registry

if TYPE_CHECKING:
    from pssr.train.loop import TrainConfig

SCHEDULES = ("onecycle", "cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adam")
SCHEDULE_FNS: Registry[float] = Registry("schedule")


@SCHEDULE_FNS.register("onecycle")
def _onecycle(step: int, total: int, warmup: float) -> float:
    """Linear warm-up from 1/25 of the peak, then cosine annealing to 0 (Smith & Topin 2019)."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return 0.04 + 0.96 * step / w
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


@SCHEDULE_FNS.register("cosine")
def _cosine(step: int, total: int, warmup: float) -> float:
    """Cosine annealing to 0 after an optional linear warm-up from 0."""
    w = int(round(warmup * total))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


@SCHEDULE_FNS.register("step")
def _step(step: int, total: int, warmup: float) -> float:
    """x0.1 at 50% and again at 75% of training (the classic CIFAR ResNet schedule)."""
    return 1.0 if step < 0.5 * total else 0.1 if step < 0.75 * total else 0.01


@SCHEDULE_FNS.register("constant")
def _constant(step: int, total: int, warmup: float) -> float:
    return 1.0


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for global ``step`` (0-based) of ``total_steps``."""
    return cfg.lr * SCHEDULE_FNS.get(cfg.schedule)(step, total_steps, cfg.warmup)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
    )


__all__ = ["OPTIMIZERS", "SCHEDULES", "SCHEDULE_FNS", "build_optimizer", "lr_at"]
