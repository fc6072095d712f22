"""Bits per byte: total cross entropy in bits / total UTF-8 bytes of the target tokens (specials: 0 bytes).

Comparable across tokenizers, unlike loss per token: a model that splits text into more, smaller
tokens pays for each. Special tokens (<|eot|> between documents) have no bytes, so their loss is
left out of the numerator too; the loss per token counts every labelled target.

    acc = BitsPerByte(token_bytes)          # token_bytes: Tokenizer.token_byte_lengths() as a tensor
    acc.add(nats, targets)                  # per-position cross entropy (N,) and target ids (N,)
    acc.bpb, acc.loss

    acc = stream_bpb(model, ids, token_bytes, batch_size=8)              # a whole token stream, each target once
    acc = stream_bpb(model, ids, token_bytes, stride=128)                # sliding windows: more context per target
    acc = examples_bpb(model, sft_reader_examples, token_bytes)         # (ids, labels) pairs: the labelled targets

One implementation: training's val_bpb (ngpt.train.evaluate), `ngpt eval bpb` and `ngpt bench learn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ngpt.settings import IGNORE_INDEX


class BitsPerByte:
    """Running totals of cross entropy over target tokens, and of the bytes those tokens stand for."""

    def __init__(self, token_bytes: Tensor) -> None:
        self.token_bytes = token_bytes
        self.nats = 0.0  # over every labelled target
        self.tokens = 0
        self.byte_nats = 0.0  # over the targets that carry bytes (not specials)
        self.bytes = 0

    def add(self, nats: Tensor, targets: Tensor) -> None:
        """nats (N,) fp32 cross entropy per position, targets (N,) ids with IGNORE_INDEX where unlabelled."""
        valid = targets != IGNORE_INDEX
        nbytes = self.token_bytes.to(targets.device)[targets.clamp(min=0)] * valid
        self.nats += float(nats[valid].sum())
        self.tokens += int(valid.sum())
        self.byte_nats += float((nats * (nbytes > 0)).sum())
        self.bytes += int(nbytes.sum())

    @property
    def loss(self) -> float:
        """Mean cross entropy per labelled target token, in nats."""
        return self.nats / max(self.tokens, 1)

    @property
    def bpb(self) -> float | None:
        return self.byte_nats / (math.log(2) * self.bytes) if self.bytes else None

    def to_json(self) -> dict:
        return {"bpb": self.bpb, "loss": self.loss, "tokens": self.tokens, "bytes": self.bytes}


def token_nats(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross entropy per position (fp32 softmax), flattened; 0 where targets are IGNORE_INDEX."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="none")


def windows(n_tokens: int, seq_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) per window over a stream of n_tokens ids: inputs ids[start:end-1], targets
    ids[start+1:end], and only targets at positions >= first_scored count, so each target counts once.

    stride None: non-overlapping windows of seq_len targets. stride S < seq_len: windows move by S and
    score their last S targets (each after seq_len - S tokens of context), the first window all of its own.
    """
    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise ValueError(f"--stride {stride}: use 1 .. the model's context ({seq_len})")
    out, scored_until, start = [], 1, 0
    while scored_until < n_tokens:
        end = min(start + seq_len + 1, n_tokens)
        out.append((start, end, scored_until))
        scored_until = end
        start += stride
    return out


@torch.no_grad()
def stream_bpb(
    model: torch.nn.Module,
    ids: Tensor,
    token_bytes: Tensor,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    on_window: Callable[[int], None] | None = None,
) -> BitsPerByte:
    """Score every target of a 1-D id stream once (deterministic), in batches of equal-length windows."""
    device = next(model.parameters()).device
    seq_len = model.cfg.seq_len
    acc = BitsPerByte(token_bytes.to(device))
    spans = windows(len(ids), seq_len, stride)
    was_training = model.training
    model.eval()
    for i in range(0, len(spans), batch_size):
        chunk = spans[i : i + batch_size]
        for same_len in _by_length(chunk):
            rows = torch.stack([ids[s:e] for s, e, _ in same_len]).to(device=device, dtype=torch.long)
            x, y = rows[:, :-1], rows[:, 1:].clone()
            for r, (s, _, first) in enumerate(same_len):
                y[r, : first - s - 1] = IGNORE_INDEX  # targets an earlier window already scored
            with autocast():
                logits, _ = model(x)
            acc.add(token_nats(logits, y), y.reshape(-1))
        if on_window is not None:
            on_window(len(chunk))
    model.train(was_training)
    return acc


@torch.no_grad()
def examples_bpb(
    model: torch.nn.Module,
    examples: Iterable[tuple[np.ndarray, np.ndarray]],
    token_bytes: Tensor,
    *,
    batch_size: int = 8,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> BitsPerByte:
    """Score the labelled targets of whole examples (an SFT split: ids and labels, IGNORE_INDEX where untrained),
    each example alone in its row (its first seq_len + 1 tokens), so no example sees another's context."""
    device = next(model.parameters()).device
    width = model.cfg.seq_len + 1
    acc = BitsPerByte(token_bytes.to(device))
    pairs = sorted(((ids[:width], labels[:width]) for ids, labels in examples), key=lambda p: len(p[0]))
    was_training = model.training
    model.eval()
    for i in range(0, len(pairs), batch_size):
        chunk = [p for p in pairs[i : i + batch_size] if len(p[0]) > 1]
        if not chunk:
            continue
        n = max(len(ids) for ids, _ in chunk)
        rows = torch.zeros((len(chunk), n), dtype=torch.long)
        labels = torch.full((len(chunk), n), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, lab) in enumerate(chunk):
            rows[r, : len(ids)] = torch.from_numpy(ids)
            labels[r, : len(lab)] = torch.from_numpy(lab)
        x, y = rows[:, :-1].to(device), labels[:, 1:].to(device)
        with autocast():
            logits, _ = model(x)
        acc.add(token_nats(logits, y), y.reshape(-1))
    model.train(was_training)
    return acc


def _by_length(spans: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    groups: dict[int, list] = {}
    for span in spans:
        groups.setdefault(span[1] - span[0], []).append(span)
    return list(groups.values())
