"""The learning-rate schedule, on the share of the budget used, so warmup and decay end where the run does.

    p = budget_progress(step, tokens, elapsed_s, cfg)        # the largest of step/total_steps, tokens/max_tokens, elapsed/max_time
    factor = lr_factor(step, p, cfg)                          # × each group's peak lr (ngpt.train.optim)
    momentum = muon_momentum(step, cfg)
    left = seconds_left(step, tokens, elapsed_s, step_s, tokens_per_step, cfg)   # what compile: auto weighs

cosine: linear warmup over warmup_steps, then cos from 1 to final_lr_frac over the budget.
wsd (warmup-stable-decay): linear warmup, constant, then a linear warmdown to final_lr_frac over the
last `warmdown_frac` of the budget — an "8h" run anneals in its last hours whatever its step count.
Both reach final_lr_frac exactly when the budget is used up (p = 1).
"""

from __future__ import annotations

import math

from ngpt.settings import TrainSettings, parse_duration


def budget_progress(step: int, tokens: int, elapsed_s: float, cfg: TrainSettings) -> float:
    """The share of the run's budget used so far, in [0, 1]: whichever of steps, tokens and time runs out first."""
    shares = [step / cfg.total_steps]
    if cfg.max_tokens is not None:
        shares.append(tokens / cfg.max_tokens)
    max_time = parse_duration(cfg.max_time)
    if max_time is not None:
        shares.append(elapsed_s / max_time)
    return min(1.0, max(shares))


def seconds_left(step: int, tokens: int, elapsed_s: float, step_s: float, tokens_per_step: int,
                 cfg: TrainSettings) -> float:
    """The wall time the budget has left at step_s seconds per step: whichever of steps, tokens and time ends first."""
    steps_left = cfg.total_steps - step
    if cfg.max_tokens is not None:
        steps_left = min(steps_left, math.ceil((cfg.max_tokens - tokens) / tokens_per_step))
    left = [max(0, steps_left) * step_s]
    max_time = parse_duration(cfg.max_time)
    if max_time is not None:
        left.append(max(0.0, max_time - elapsed_s))
    return min(left)


def lr_factor(step: int, progress: float, cfg: TrainSettings) -> float:
    """The multiplier of every group's peak lr at this step (0 at step 0 while warming up)."""
    warm = step / cfg.warmup_steps if step < cfg.warmup_steps else 1.0
    final = cfg.final_lr_frac
    if cfg.schedule == "cosine":
        decay = final + 0.5 * (1 - final) * (1 + math.cos(math.pi * progress))
    else:
        into_warmdown = (progress - (1 - cfg.warmdown_frac)) / cfg.warmdown_frac
        decay = 1.0 if into_warmdown <= 0 else 1.0 - (1 - final) * min(1.0, into_warmdown)
    return warm * decay


def muon_momentum(step: int, cfg: TrainSettings) -> float:
    """Muon's momentum: muon_momentum_start rising linearly to muon_momentum over muon_momentum_warmup_steps."""
    if step >= cfg.muon_momentum_warmup_steps:
        return cfg.muon_momentum
    t = step / cfg.muon_momentum_warmup_steps
    return cfg.muon_momentum_start + t * (cfg.muon_momentum - cfg.muon_momentum_start)
