"""Learning-rate schedules (the optimiser itself is injected through the CLI)."""

from __future__ import annotations

import math
from typing import Any

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


def parameter_groups(model: torch.nn.Module, lora_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in optimiser groups by what weight decay should do to them.

    * LoRA adapter weights (``lora_*``): ``weight_decay = lora_weight_decay``. Decay shrinks A and B, i.e.
      pulls the fine-tune towards the base model. DoRA's magnitude vectors get no decay (it would pull them
      towards 0, not towards the base).
    * Norm gains and biases, every bias, embedding tables: ``weight_decay = 0``. Decaying a LayerNorm gain
      towards 0 (not its initial 1), or every step the rows of an embedding table that a batch does not use,
      only damages them; this is the usual split of transformer training (e.g. minGPT's optimiser).
    * Everything else (matmul weights: attention, MLP, output heads, text projection): no ``weight_decay``
      key, so the optimiser's own setting applies (0.1 in ``configs/base.yaml``).

    Empty groups are left out; every trainable parameter is in exactly one group.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or "norm" in type(module).__name__.lower()
        if norm or isinstance(module, torch.nn.Embedding):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    lora, plain, decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_magnitude_vector" in name:  # DoRA's magnitudes: decay would pull them to 0, not to the base
            plain.append(p)
        elif "lora_" in name:
            lora.append(p)
        elif id(p) in no_decay or name.endswith("bias"):
            plain.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": plain, "weight_decay": 0.0},
                                    {"params": lora, "weight_decay": lora_weight_decay}]  # fmt: skip
    return [g for g in groups if g["params"]]
