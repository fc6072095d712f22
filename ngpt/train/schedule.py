"""Learning-rate schedule: linear warmup 0 → base_lr, then cosine decay to min_lr, clamped after the end.

    lr_at_step(0, 1000, base_lr=6e-4, warmup_steps=100, min_lr=6e-5) == 0.0
"""

from __future__ import annotations

import math


def lr_at_step(step: int, total_steps: int, *, base_lr: float, warmup_steps: int, min_lr: float) -> float:
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
