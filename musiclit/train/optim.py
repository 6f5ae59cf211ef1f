"""Learning-rate schedules (the optimiser itself is injected through the CLI)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from musiclit.errors import ConfigError


class WarmupCosine(LambdaLR):
    """Linear warm-up from 0, then cosine decay to ``min_lr_ratio`` x the base learning rate.

    Args:
        optimizer: The optimiser.
        warmup_steps: Optimiser steps of linear warm-up.
        total_steps: Total optimiser steps; None lets the training module fill in the trainer's estimate.
        min_lr_ratio: Final learning rate as a fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.1,
    ) -> None:
        if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at optimiser step ``step``."""
        total = self.total_steps if self.total_steps is not None else max(step + 1, self.warmup_steps + 1)
        warmup = min(self.warmup_steps, max(total - 1, 0))
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
