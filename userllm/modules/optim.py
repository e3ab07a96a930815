"""The optimiser and learning-rate schedule both stages use: AdamW, linear warmup, cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to the base rate, then cosine decay to `min_ratio` of it at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def decay_groups(named: Sequence[tuple[str, nn.Parameter]], weight_decay: float, **options) -> list[dict]:
    """Split trainable parameters into a decayed group (matrices) and an undecayed one (biases,
    norms, embeddings), each with `options` such as a group-specific learning rate."""
    decay, no_decay = [], []
    for name, param in named:
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "embed" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, **options}, {"params": no_decay, "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]


def adamw_with_schedule(
    groups: list[dict], lr: float, betas: Sequence[float], warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> dict:
    """Lightning's `configure_optimizers` answer: AdamW over `groups`, LR stepped every batch."""
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
