"""Learning-rate schedule: linear warmup from 0 to the peak, then linear decay to 0."""

from __future__ import annotations

import math

import torch


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Warmup length in optimizer steps (rounded up, so any ratio > 0 warms up at least once)."""
    return min(total_steps, math.ceil(total_steps * warmup_ratio))


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate used for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - step
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    return max(0.0, remaining / decay_steps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, warmup_steps, total_steps)
    )
