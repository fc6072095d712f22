"""fp32 matmuls on the CPU through oneDNN instead of MKL: twice the speed where MKL will not use AVX-512.

PyTorch's CPU build sends fp32 `mm`/`linear` to MKL, and MKL picks its AVX2 kernels on non-Intel CPUs,
AVX-512 or not. oneDNN (bundled with PyTorch, what it already uses for bf16) dispatches on the
instruction set alone. Measured on a 2-core AMD EPYC (Zen 5, AVX-512), (2048×384)·(384×1024) and the
two backward products: MKL 230-265 GFLOP/s, oneDNN 430-620 GFLOP/s. Same IEEE fp32 arithmetic (only
the summation order differs), so results match MKL's to fp32 rounding.

    from ngpt.kernels.onednn import Linear, matmul_nt
    layer = Linear(384, 1024, bias=False)    # an nn.Linear: same parameters, state dict and init
    y = matmul_nt(a, b)                      # a @ b.T for 2-D fp32 CPU tensors (no autograd)

Anything else (bf16/fp16, autocast, GPUs, code being compiled by torch.compile, a torch without the op,
a CPU where oneDNN is not the faster one: `preferred()`) takes the ordinary path.
The op is `torch.ops.mkldnn._linear_pointwise`, the one torch.compile's CPU backend emits.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@lru_cache(maxsize=None)
def available() -> bool:
    """Whether the oneDNN linear op exists and runs here (checked once on a tiny product)."""
    try:
        a, b = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""), a @ b.T))
    except (AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=None)
def preferred() -> bool:
    """Whether oneDNN multiplies fp32 faster than torch's default here, timed once per process (~20 ms).

    Where MKL already runs AVX-512 (Intel) or oneDNN lacks tuned kernels (some ARM builds), the
    default stays: oneDNN must win by 10 % on a training-sized product to be used.
    """
    if not available():
        return False
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 384, generator=gen), torch.randn(1024, 384, generator=gen)

    def best_of(product) -> float:
        product()  # warm-up: library init, kernel selection
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            product()
            times.append(time.perf_counter() - t0)
        return min(times)

    default = best_of(lambda: a @ b.T)
    ours = best_of(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    return ours * 1.1 < default


def _applies(*tensors: Tensor) -> bool:
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        # torch.compile lowers this op only for weights it prepacked itself: let it compile plain mm
        and not torch.compiler.is_compiling()
        and preferred()
    )


def matmul_nt(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T for 2-D a (M, K) and b (N, K); through oneDNN for fp32 CPU tensors (strided views are fine)."""
    if _applies(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.T


class _LinearFunction(torch.autograd.Function):
    """y = x Wᵀ with all three products (forward, input and weight gradients) through oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return matmul_nt(x.reshape(-1, x.size(-1)), weight).view(*x.shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, weight.size(0))
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_nt(g, weight.t()).view(x.shape)  # g W
        if ctx.needs_input_grad[1]:
            grad_w = matmul_nt(g.t(), x.reshape(-1, x.size(-1)).t())  # gᵀ x
        return grad_x, grad_w


class Linear(nn.Linear):
    """nn.Linear (no bias) whose fp32 CPU products go through oneDNN; every other case is F.linear."""

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None and _applies(x, self.weight):
            return _LinearFunction.apply(x, self.weight)
        return F.linear(x, self.weight, self.bias)
