"""Validation: val_pretrain_loss, val_sft_loss and val_bpb on fixed held-out batches.

Each metric is computed on the same batches at every evaluation (a fresh sampler with a fixed
seed), so curves move because the model changes, not because the sample did.
val_bpb = total cross entropy in bits / total UTF-8 bytes of the target tokens, with special tokens
counting 0 bytes (and so excluded): comparable across tokenizers, unlike loss per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

from ngpt.batches import Batch
from ngpt.settings import IGNORE_INDEX

BatchFn = Callable[[], Batch]  # ngpt.batches: x, y, doc_ids


@torch.no_grad()
def eval_losses(
    model: torch.nn.Module,
    next_batch: BatchFn,
    n_batches: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    token_bytes: torch.Tensor | None = None,
) -> tuple[float, float | None]:
    """Mean loss over labelled tokens, and bits per byte when `token_bytes` (bytes per id) is given."""
    was_training = model.training
    model.eval()
    total_nats = 0.0
    total_tokens = 0
    bpb_nats = 0.0
    total_bytes = 0
    for _ in range(n_batches):
        x, y, doc_ids = next_batch()
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, _ = model(x, doc_ids=None if doc_ids is None else doc_ids.to(device))
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        valid = y.flatten() != IGNORE_INDEX
        total_nats += float(nats[valid].sum())
        total_tokens += int(valid.sum())
        if token_bytes is not None:
            nbytes = token_bytes[y.flatten().clamp(min=0)] * valid
            bpb_nats += float((nats * (nbytes > 0)).sum())
            total_bytes += int(nbytes.sum())
    model.train(was_training)
    loss = total_nats / max(total_tokens, 1)
    bpb = bpb_nats / (math.log(2) * total_bytes) if token_bytes is not None and total_bytes else None
    return loss, bpb
