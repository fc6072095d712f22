"""One optimizer step, as training takes it and as `ngpt bench speed --train` times it.

    loss = accumulate_gradients(model, next_batch, accum_steps=4, autocast=autocast, scaler=scaler, device=dev)
    optimizer_step(optimizer, params, scaler=scaler, grad_clip=1.0)

`accumulate_gradients` runs `accum_steps` micro-batches forward and backward (the loss of each
divided by accum_steps, so gradients are the mean over the step); under DDP gradients sync only on
the last micro-batch. The loop checks the returned loss for NaN/inf *between* the two calls, so a
diverged step never updates the weights. `optimizer_step` unscales (fp16 GradScaler), clips,
steps and zeroes the gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ngpt.batches import Batch
from ngpt.device import Precision


def autocast_factory(device: torch.device, precision: Precision) -> Callable[[], contextlib.AbstractContextManager]:
    """A fresh autocast context per call (entered around each forward), or a no-op when precision is off."""
    if not precision.enabled:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=precision.dtype)


def accumulate_gradients(
    model: nn.Module,
    next_batch: Callable[[], Batch],
    *,
    accum_steps: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    ddp: bool = False,
) -> float:
    """Forward + backward over accum_steps micro-batches; the step's mean training loss (this rank)."""
    loss_sum = 0.0
    for micro in range(accum_steps):
        x, y, doc_ids = next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        doc_ids = None if doc_ids is None else doc_ids.to(device, non_blocking=True)
        last = micro == accum_steps - 1
        sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
        with sync:
            with autocast():
                _, loss = model(x, y, logits="none", doc_ids=doc_ids)
            loss = loss / accum_steps
            (scaler.scale(loss) if scaler else loss).backward()
        loss_sum += loss.detach().item()
    return loss_sum


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    *,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float,
) -> None:
    """Unscale (fp16), clip the global gradient norm to grad_clip (0 = off), step, zero the gradients."""
    if scaler:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
