"""The LM head and its cross entropy in one pass, a block of rows at a time: training never holds (N, V) logits.

The plain way (`F.cross_entropy(x @ Wᵀ)`) materialises the logits, an fp32 copy for the softmax, the
log-probabilities and their gradient: at B·T=2048 rows and V=16384 that is ~0.5 GB of fresh memory per
step, most of the CPU time outside the matmuls (allocation, page faults, memory traffic). Here each block
of rows computes its logits, its loss and, when a gradient is wanted, the gradients of x and W right away
(softmax − one-hot is known as soon as the block's logsumexp is), then drops the block. Backward only
scales the stored gradients by the incoming one. Same FLOPs as the plain way (one forward and two
backward matmuls), same result up to rounding — as Liger Kernel's and torchtune's fused losses.

    from ngpt.kernels.linear_cross_entropy import linear_cross_entropy
    loss = linear_cross_entropy(x, weight, targets)   # x (N, C), weight (V, C), targets (N,), -100 = no loss

Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as the plain way does;
in fp32 on the CPU they go through oneDNN (ngpt.kernels.onednn).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ngpt.settings import IGNORE_INDEX
from ngpt.kernels.onednn import matmul_nt

# One block's fp32 logits. Measured (N=2048, V=16384, C=384, fwd+bwd, 2-core CPU): 4 MiB 172 ms bf16,
# 8 MiB 143, 16 MiB 118, 64 MiB 153 (big blocks go back to fresh pages from the OS each time); the
# plain way 187. Big enough that the weight-gradient matmuls are not starved for rows.
BLOCK_BYTES = 16 * 2**20


def block_rows(vocab_size: int) -> int:
    return max(1, BLOCK_BYTES // (4 * vocab_size))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, compute_dtype: torch.dtype, grad_mode: bool,
                cap: float | None) -> Tensor:
        # needs_input_grad says requires_grad, not whether grad mode was on at the call (it is off in here)
        want_x, want_w = grad_mode and ctx.needs_input_grad[0], grad_mode and ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        acc = torch.promote_types(compute_dtype, torch.float32)  # softmax and sums: fp32 at least
        n_valid = (targets != IGNORE_INDEX).sum()
        # Pretrain windows are all labelled: skip zeroing unlabelled rows' gradients then. Asking is a
        # host sync, which torch.compile cannot trace: compiled code always zeroes them.
        all_labelled = not torch.compiler.is_compiling() and bool(n_valid == targets.numel())
        total = torch.zeros((), dtype=acc, device=x.device)
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=x.device) if want_w else None
        rows = block_rows(weight.size(0))
        for start in range(0, x.size(0), rows):
            xb = x[start : start + rows].to(compute_dtype)
            tb = targets[start : start + rows]
            valid = tb != IGNORE_INDEX
            safe = tb.clamp(min=0)  # ignored rows still index something; their terms are zeroed below
            z = matmul_nt(xb, w).to(acc)  # (rows, V)
            if cap is not None:  # logits = cap·tanh(z/cap), so d logits/dz = 1 − tanh²
                tanh = torch.tanh(z.div_(cap))
                z = tanh * cap
            logp = torch.log_softmax(z, dim=-1)
            total -= (logp.gather(1, safe[:, None]).squeeze(1) * valid).sum()
            if want_x or want_w:
                # d(sum of row losses)/d logits = softmax − one-hot(target), on labelled rows only
                grad = logp.exp_()
                grad[torch.arange(grad.size(0), device=grad.device), safe] -= 1
                if not all_labelled:
                    grad.masked_fill_(~valid[:, None], 0)
                if cap is not None:
                    grad.mul_(1 - tanh.square_())
                grad = grad.to(compute_dtype)
                if want_x:
                    grad_x[start : start + rows] = matmul_nt(grad, w.t())  # grad @ w
                if want_w:
                    # fp32: oneDNN's product; bf16/fp16: the add converts into the fp32 sum as it goes
                    grad_w += matmul_nt(grad.t(), xb.t())  # grad.T @ xb
        # The mean over labelled tokens, like F.cross_entropy (0/0 = nan when nothing is labelled).
        denom = n_valid.to(acc)
        ctx.save_for_backward(
            grad_x / denom if want_x else None, (grad_w / denom).to(weight.dtype) if want_w else None
        )
        return total / denom

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return (
            None if grad_x is None else grad_x * grad_out.to(grad_x.dtype),
            None if grad_w is None else grad_w * grad_out.to(grad_w.dtype),
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, softcap: float | None = None) -> Tensor:
    """Mean cross entropy of logits x @ weightᵀ against targets over labelled rows (IGNORE_INDEX skipped).

    x (N, C), weight (V, C), targets (N,) int64. Equals `F.cross_entropy(x @ weight.T, targets,
    ignore_index=-100)` (in fp32 softmax) without ever holding the (N, V) logits. softcap: the logits
    are cap·tanh(logits/cap) first (ngpt.kernels.lm_loss.softcap).
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(x.dtype, weight.dtype)
    # The function casts by itself; autocast around it would recast what it already cast.
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(x, weight, targets, compute_dtype, torch.is_grad_enabled(), softcap)
