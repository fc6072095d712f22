"""Weight-only int8 for generation: every matmul reads int8 weights, everything else stays fp32.

Batch-1 decoding multiplies one token's activations by every weight matrix, so a step costs about
what reading the weights costs. Storing each matrix as int8 with one scale per output row (symmetric,
absmax/127) quarters the bytes of fp32; `torch._weight_int8pack_mm` multiplies bf16 activations by
them without ever writing a dequantised copy. Embedding lookup, norms, RoPE, attention and the KV
cache stay fp32; what is rounded is each matmul's weights (by at most half a step: ~1/254 of the row's
largest weight) and its input (to bf16). The tied head gets its own int8 copy; the embedding table
it shares stays fp32 for lookups.

    from ngpt.quantize import quantize_int8
    model = quantize_int8(model)       # in place; then Engine(model, tok, "cpu", NO_AUTOCAST)

CPU only here (the kernel's CPU path is what was measured and tested); `int8_supported(device)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ngpt.model import GPT, MLP, CausalSelfAttention, ReLU2MLP

ACTIVATION_DTYPE = torch.bfloat16  # what the int8 kernel multiplies the weights with
# From this many rows on (a prompt, not one token) dequantise and use a bf16 matmul: the int8 kernel is a
# matrix-vector one. Measured 256-token prefill, default model: 33 ms int8 kernel, 12 ms dequantised.
MATRIX_ROWS = 16


def int8_supported(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """y = x Wᵀ with W stored as int8 rows × per-row scales; x of any float dtype, y in x's dtype."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        absmax = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
        # The kernel takes the scale in bf16: round it up (bf16 rounding is within 2⁻⁹), then quantise
        # against the scale really used, so every weight is within half a step and none clips.
        scale = (absmax / 127 * (1 + 2**-8)).to(ACTIVATION_DTYPE)
        self.register_buffer("weight", torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.out_features, self.in_features = w.shape

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(ACTIVATION_DTYPE)
        if flat.size(0) < MATRIX_ROWS:  # decoding: the int8 matrix-vector kernel, reading 1 byte per weight
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        else:  # a prompt: a bf16 matrix-matrix product on a transient dequantised copy is faster
            y = flat @ (self.weight.to(ACTIVATION_DTYPE) * self.scale[:, None]).T
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> Tensor:
        """The weight the module multiplies by, as fp32 (what the tests compare against)."""
        return self.weight.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


class Int8Attention(CausalSelfAttention):
    """The attention block with q, k, v as one Int8Linear (`qkv`) and o as another: fewer, larger matmuls."""

    def __init__(self, attn: CausalSelfAttention) -> None:
        nn.Module.__init__(self)
        self.layer_idx, self.n_head, self.head_dim = attn.layer_idx, attn.n_head, attn.head_dim
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm  # fp32, as every norm
        self.qkv = Int8Linear(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
        self.o = Int8Linear(attn.o.weight)

    def linear_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.qkv(x).split(self.n_head * self.head_dim, dim=-1)


class Int8MLP(MLP):
    """SwiGLU with gate and up as one Int8Linear (`gate_up`) and down as another."""

    def __init__(self, mlp: MLP) -> None:
        nn.Module.__init__(self)
        self.gate_up = Int8Linear(torch.cat([mlp.gate.weight, mlp.up.weight]))
        self.down = Int8Linear(mlp.down.weight)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Int8ReLU2MLP(ReLU2MLP):
    """ReLU² with up and down as Int8Linear."""

    def __init__(self, mlp: ReLU2MLP) -> None:
        nn.Module.__init__(self)
        self.up = Int8Linear(mlp.up.weight)
        self.down = Int8Linear(mlp.down.weight)


def quantize_int8(model: GPT) -> GPT:
    """Every linear layer of `model` as int8 (in place); the model stays fp32 otherwise.

    Each block's attention and MLP are swapped for their int8 forms (Int8Attention, Int8MLP): per
    token that is 4 matmuls per block instead of 7, each with its own casts and call overhead.
    """
    model.float()
    for block in model.blocks:
        block.attn = Int8Attention(block.attn)
        block.mlp = Int8ReLU2MLP(block.mlp) if isinstance(block.mlp, ReLU2MLP) else Int8MLP(block.mlp)
    model.lm_head = Int8Linear(model.lm_head.weight)  # a tied head gets its own copy: the lookup keeps the fp32 table
    return model.train(model.training)  # the new modules take the model's train/eval mode
