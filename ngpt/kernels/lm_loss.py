"""The language-model loss: mean cross entropy of the head's logits x @ Wᵀ against the targets.

    from ngpt.kernels.lm_loss import lm_loss
    loss = lm_loss(x, head_weight, targets)     # x (N, C), weight (V, C), targets (N,); IGNORE_INDEX = no loss
    loss = lm_loss(x, head_weight, targets, cap=15.0)   # with soft-capped logits

One function, the path chosen by device: on the CPU the fused head + cross entropy in row blocks
(ngpt.kernels.linear_cross_entropy), which never holds the (N, V) logits; its blocks were tuned
there, so other devices keep the plain logits + F.cross_entropy until someone measures there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ngpt.kernels.linear_cross_entropy import linear_cross_entropy
from ngpt.settings import IGNORE_INDEX


def lm_loss(x: Tensor, weight: Tensor, targets: Tensor, cap: float | None = None) -> Tensor:
    """cap: the logits are soft-capped (`softcap`) before the softmax, on either path."""
    if x.device.type == "cpu":
        return linear_cross_entropy(x, weight, targets, cap)
    logits = F.linear(x, weight)
    return cross_entropy(logits if cap is None else softcap(logits, cap), targets)


def softcap(logits: Tensor, cap: float) -> Tensor:
    """cap·tanh(logits/cap) in fp32: smooth, ≈ identity for |logits| ≪ cap, never beyond ±cap (Gemma 2)."""
    return cap * torch.tanh(logits.float() / cap)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross entropy over labelled positions of logits (..., V) and targets (...).

    fp32 for the softmax over V: bf16 log-probs are too coarse for a loss that moves by 1e-3.
    """
    return F.cross_entropy(logits.float().flatten(0, -2), targets.reshape(-1), ignore_index=IGNORE_INDEX)
