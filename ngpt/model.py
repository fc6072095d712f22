"""The transformer: a small Llama-style decoder, readable top to bottom.

token embedding (→ RMSNorm) → L pre-norm blocks (RMSNorm → causal self-attention with RoPE, optionally
QK-norm; RMSNorm → SwiGLU or ReLU² MLP) → final RMSNorm → LM head, tied to the embedding or its own
(→ optional logit soft-cap). No biases. Every choice that matters numerically (RoPE half-split
layout, RMSNorm in fp32, SwiGLU) is Hugging Face Llama's, so the export (ngpt.export.hf) is a rename
of tensors into Llama, Qwen3 (QK-norm) or Arcee (ReLU²), no permutation. Each option (ModelSettings)
off is the plain Llama.

    from ngpt.settings import ModelSettings
    from ngpt.model import GPT
    model = GPT(ModelSettings(vocab_size=16384, seq_len=512))
    logits, loss = model(idx, targets)           # idx, targets: (B, T) int64; targets -100 = no loss
    _, loss = model(idx, targets, logits="none")  # training: only the loss (the fused path on the CPU)

The kernels (attention, the loss, the oneDNN linear) live in ngpt.kernels; this file only says what
is computed. The KV-cache seam for generation: pass `kv_cache` (anything with `update(layer_idx, k, v)`,
see `KVCache`) and `start_pos` (how many tokens the cache already holds).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ngpt.kernels.attention import attention
from ngpt.kernels.lm_loss import cross_entropy, lm_loss, softcap
from ngpt.kernels.onednn import Linear
from ngpt.settings import ModelSettings


class KVCache(Protocol):
    """What attention needs from a KV cache: store this layer's new post-RoPE k/v, return all so far.

    k, v: (B, n_head, T_new, head_dim) → (B, n_head, T_past + T_new, head_dim).
    """

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


# ---------------------------------------------------------------------------------------------
# RoPE, in Llama's half-split layout: dimension i of a head is rotated together with i + D/2.


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (seq_len, head_dim), computed exactly as HF Llama does (fp32), for export parity."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, D) by the angles of its positions; cos/sin are (T, D) rows for those positions."""
    if cos.dtype != x.dtype:  # under bf16 autocast, stay in bf16 (the check: decoding calls this 2·L times a token)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------------------------
# The building blocks.


class RMSNorm(nn.Module):
    """x / rms(x) over the last dimension, times a learned gain (gain=False: parameter-free)."""

    def __init__(self, dim: int, eps: float, gain: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if w is None or w.dtype == x.dtype:
            # One op, bit-identical to the formula below (tested, fp32 and bf16, forward and backward): torch
            # keeps the statistics in fp32 for a bf16 input. Six ops for a 1M-parameter model's many norms.
            return F.rms_norm(x, (self.dim,), w, self.eps)
        # A gain in fp32 on bf16 activations (autocast): statistics in fp32 (a mean of squares loses too
        # much in 8 mantissa bits); cast back before the weight, as Llama does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) if w is None else w * x32.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelSettings, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KV cache is ours
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        C = cfg.n_embd
        self.q = Linear(C, C, bias=False)
        self.k = Linear(C, C, bias=False)
        self.v = Linear(C, C, bias=False)
        self.o = Linear(C, C, bias=False)
        # QK-norm bounds every attention logit by √D·|gains|², whatever the weights grow to: stable at high lr.
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps, cfg.norm_gains) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps, cfg.norm_gains) if cfg.qk_norm else None

    def linear_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.q(x), self.k(x), self.v(x)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) → q, k, v (B, n_head, T, head_dim), before RoPE: heads become a batch dimension."""
        q, k, v = (self.split_heads(t) for t in self.linear_qkv(x))
        if self.q_norm is not None:  # a gain in fp32 would promote bf16 q, k to fp32 under autocast: keep v's dtype
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        return q, k, v

    def split_heads(self, t: Tensor) -> Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None, doc_ids: Tensor | None = None
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.project(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = attention(q, k, v, doc_ids)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU, as Llama: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelSettings) -> None:
        super().__init__()
        self.gate = Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.up = Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.down = Linear(cfg.ffn_dim, cfg.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ReLU2MLP(nn.Module):
    """ReLU², as modded-nanogpt and nanochat: down(relu(up(x))²); no gate, so 4·C hidden for SwiGLU's parameters."""

    def __init__(self, cfg: ModelSettings) -> None:
        super().__init__()
        self.up = Linear(cfg.n_embd, cfg.ffn_dim, bias=False)
        self.down = Linear(cfg.ffn_dim, cfg.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelSettings, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gains)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gains)
        self.mlp = ReLU2MLP(cfg) if cfg.mlp == "relu2" else MLP(cfg)
        # The one place dropout lives: on each branch's output before it joins the residual stream.
        self.dropout = cfg.dropout

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None, doc_ids: Tensor | None = None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, kv_cache, doc_ids))
        x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x

    def drop(self, y: Tensor) -> Tensor:
        # A plain function, not an nn.Dropout module: generation calls this 2·L times per token.
        return F.dropout(y, self.dropout, self.training) if self.dropout > 0 else y


# ---------------------------------------------------------------------------------------------
# The model.


class GPT(nn.Module):
    def __init__(self, cfg: ModelSettings) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = False  # set by training: recompute each block in backward
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # Normalising the embedding makes its scale (and so its init and lr) irrelevant to the blocks.
        self.emb_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gains) if cfg.embed_norm else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gains)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one V×C matrix reads tokens in and out
        # Not in the state dict: derived from the config, and absent from Llama checkpoints.
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        std = cfg.init_std if cfg.init_std is not None else cfg.n_embd ** -0.5
        embed_std = cfg.embed_init_std if cfg.embed_init_std is not None else std

        def init_weights(module: nn.Module) -> None:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=embed_std if isinstance(module, nn.Embedding) else std)

        self.apply(init_weights)  # children first: a tied head is initialised as the Linear it also is
        outputs = [w for b in self.blocks for w in (b.attn.o.weight, b.mlp.down.weight)]
        if cfg.zero_init:
            # Every block starts as the identity and the untied head predicts uniformly (modded-nanogpt):
            # each branch grows from zero at the rate its gradient asks for.
            for w in outputs + ([] if cfg.tie_embeddings else [self.lm_head.weight]):
                nn.init.zeros_(w)
        else:
            # Each residual branch adds to the stream 2·L times in all; scale their output projections so
            # the stream's variance at init does not grow with depth (GPT-2).
            for w in outputs:
                nn.init.normal_(w, std=std / math.sqrt(2 * cfg.n_layer))

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        start_pos: int = 0,
        kv_cache: KVCache | None = None,
        logits: Literal["all", "last", "none"] = "all",
        doc_ids: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """idx (B, T) → logits (B, T, V), and the mean cross entropy when targets (B, T) are given.

        targets[b, t] is the label for position t (already shifted); IGNORE_INDEX (-100) means no loss.
        start_pos is the position of idx[:, 0] (the number of tokens already in kv_cache).
        logits: "all" positions; "last" only (B, 1, V), what generation needs after a prompt; "none",
        what training wants: only the loss (lm_loss: on the CPU it never holds the (B, T, V) logits).
        doc_ids (B, T): for rows packing several documents (SFT batches), attention stays within each.
        """
        B, T = idx.shape
        self._check_call(start_pos, T, targets, kv_cache, logits, doc_ids)
        cos = self.rope_cos[start_pos : start_pos + T]
        sin = self.rope_sin[start_pos : start_pos + T]
        x = self.tok_emb(idx)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        # A cache must see each update once, so recomputation (checkpointing) is for training only.
        recompute = self.activation_checkpointing and kv_cache is None and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, cos, sin, None, doc_ids, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache, doc_ids)
        x = self.norm(x)
        cap = self.cfg.logit_softcap
        if logits == "none":
            return None, lm_loss(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T), cap=cap)
        out = self.lm_head(x[:, -1:] if logits == "last" else x)
        if cap is not None:
            out = softcap(out, cap)
        return out, None if targets is None else cross_entropy(out, targets)

    def _check_call(self, start_pos, T, targets, kv_cache, logits, doc_ids) -> None:
        if start_pos + T > self.cfg.seq_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + T - 1} do not fit model.seq_len={self.cfg.seq_len}; "
                "pass at most seq_len tokens (truncate the prompt or start a new context)"
            )
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits={logits!r}; choose 'all', 'last' or 'none'")
        if logits == "none" and targets is None:
            raise ValueError("logits='none' returns only the loss, so it needs targets")
        if logits == "none" and not self.lm_head.weight.is_floating_point():
            raise ValueError("logits='none' trains through the head's weight; this model's head is quantized (inference only)")
        if logits == "last" and targets is not None:
            raise ValueError("logits='last' gives one position; a loss over targets needs logits='all' or 'none'")
        if doc_ids is not None and kv_cache is not None:
            raise ValueError("doc_ids are for whole packed rows (training), not for KV-cache generation")

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (a tied head is the embedding); non_embedding drops the V×C table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the PaLM/nanoGPT estimate used for MFU.

        6N for the weight matmuls (N includes the head, once; an untied embedding's lookup is free),
        plus 12·L·C·T for attention scores and weighted sums at context T (counted as if unmasked,
        by the same convention).
        """
        T = self.cfg.seq_len if seq_len is None else seq_len
        matmul_params = self.num_params(non_embedding=not self.cfg.tie_embeddings)
        return 6 * matmul_params + 12 * self.cfg.n_layer * self.cfg.n_embd * T


def param_count(cfg: ModelSettings) -> int:
    """The parameter count of a model of these shapes, without allocating weights (built on `meta`).

    Also right for a quantized model, whose int8 weights are buffers, not parameters.
    """
    with torch.device("meta"):
        return GPT(cfg).num_params()
