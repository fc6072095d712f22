"""Validation: val_pretrain_loss, val_sft_loss and val_bpb on fixed held-out batches.

Each metric is computed on the same batches at every evaluation (a fresh sampler with a fixed
seed), so curves move because the model changes, not because the sample did.
val_bpb = total cross entropy in bits / total UTF-8 bytes of the target tokens, with special tokens
counting 0 bytes (and so excluded): comparable across tokenizers, unlike loss per token
(ngpt.eval.bpb, the one implementation `ngpt eval bpb` and `ngpt bench learn` use too).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from ngpt.batches import Batch
from ngpt.eval.bpb import BitsPerByte, token_nats

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
    no_bytes = torch.zeros(model.cfg.vocab_size, dtype=torch.int32, device=device)  # loss only
    acc = BitsPerByte(token_bytes if token_bytes is not None else no_bytes)
    for _ in range(n_batches):
        x, y, doc_ids = next_batch()
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, _ = model(x, doc_ids=None if doc_ids is None else doc_ids.to(device))
        acc.add(token_nats(logits, y), y.flatten())
    model.train(was_training)
    return acc.loss, (acc.bpb if token_bytes is not None else None)
