"""AdamW as the model wants it: weight decay on matrices (linear weights, embedding) only.

Norm gains are 1-D and are not decayed: decaying them pulls activations toward zero for no benefit.

    opt = make_optimizer(model, lr=6e-4, weight_decay=0.1, device=torch.device("cpu"))
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

BETAS = (0.9, 0.95)
FUSED_DEVICES = ("cuda", "cpu")  # where torch has a fused AdamW kernel (MPS's is not used here)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    params = {id(p): p for p in model.parameters() if p.requires_grad}  # tied weights appear once
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel: one pass over each tensor instead of a dozen. On CUDA the usual choice; on a
    # 2-core CPU it measured 4.7 ms vs 20.9 ms (foreach) per step for the 20M-parameter default model.
    fused = device.type in FUSED_DEVICES and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=1e-8, fused=fused or None)
