"""Optimizers and learning-rate schedules (per iteration, with linear warm-up)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from segforge.config import OptimizerConfig, ScheduleConfig

if TYPE_CHECKING:
    from segforge.training.loop import Progress


def create_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the U-Net paper: 0.99), Adam or AdamW; no weight decay on norms and biases."""
    if config.lr is None or not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"optimizer.lr must be a positive number, got {config.lr}")
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.name!r}; choose from ['sgd', 'adam', 'adamw']")


def lr_factor(step: int, decayed: float, steps_per_epoch: int, config: ScheduleConfig, *,
              warmup_steps: int = 0) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based): a linear ramp over ``warmup_steps``,
    then the schedule's decay, ``decayed`` (0 to 1) of the way through its course."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.name in ("poly", None):
        return (1.0 - decayed) ** config.power
    if config.name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * decayed))
    if config.name == "step":
        return config.gamma ** (step // max(config.step_size * steps_per_epoch, 1))
    return 1.0


def create_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, *,
                     progress: Progress) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning rates that follow ``progress``: its total and warm-up steps may be refitted while the
    run goes (a time budget; ``Progress.refit`` keeps the decay continuous), and the factor is read anew at
    every step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, progress.decayed(step), progress.steps_per_epoch, config,
                                          warmup_steps=progress.warmup_steps)
    )
