"""The transformer: a small Llama-style decoder, readable top to bottom.

token embedding → L pre-norm blocks (RMSNorm → causal self-attention with RoPE; RMSNorm → SwiGLU MLP)
→ final RMSNorm → LM head tied to the embedding. No biases. Every choice that matters numerically
(RoPE half-split layout, RMSNorm in fp32, SwiGLU) is Hugging Face Llama's, so the export to
`LlamaForCausalLM` is a rename of tensors, no permutation:

    ngpt                          LlamaForCausalLM
    tok_emb.weight                model.embed_tokens.weight
    blocks.{i}.attn_norm.weight   model.layers.{i}.input_layernorm.weight
    blocks.{i}.attn.{q,k,v,o}     model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
    blocks.{i}.mlp_norm.weight    model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.mlp.{gate,up,down} model.layers.{i}.mlp.{gate,up,down}_proj.weight
    norm.weight                   model.norm.weight
    lm_head.weight                lm_head.weight  (the same tensor as tok_emb.weight: tie_word_embeddings)

Usage:

    from ngpt.settings import ModelSettings
    from ngpt.model import GPT
    model = GPT(ModelSettings(vocab_size=16384, seq_len=512))
    logits, loss = model(idx, targets)           # idx, targets: (B, T) int64; targets -100 = no loss
    _, loss = model(idx, targets, logits="none")  # training: the fused head + loss, no (B, T, V) logits

The KV-cache seam for generation: pass `kv_cache` (anything with `update(layer_idx, k, v)`, see
`KVCache`) and `start_pos` (how many tokens the cache already holds).
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ngpt.chat_format import IGNORE_INDEX
from ngpt.linear_cross_entropy import linear_cross_entropy
from ngpt.onednn import Linear
from ngpt.settings import ModelSettings

INIT_STD = 0.02


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
# Causal attention over a whole sequence (training, prefill, no-cache generation).

QUERY_CHUNK = 128  # query rows per block in matmul_causal_attention (64/128/256/512: 10.5/9.4/11.2/13.3 ms bf16)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ/√D + causal mask) v for q, k, v (B, H, T, D): the fastest exact kernel per device.

    doc_ids (B, T), for rows packing several documents (SFT): a position only sees earlier positions
    of its own document, as if each were alone in the row (RoPE is relative, so their offsets in
    the row do not matter).

    On GPUs that is the fused SDPA kernel (with doc_ids, SDPA with a dense (B, 1, T, T) mask, which
    rules out the flash kernel: unmeasured, no GPU here). On CPUs the fused (flash) kernel is slower than plain
    matmuls: measured fwd+bwd at B=4 H=6 T=512 D=64 on a 2-core AVX512-BF16 CPU, SDPA 26 ms (bf16) /
    30 ms (fp32) per layer vs matmul_causal_attention 9.4 / 18 ms. `ngpt bench speed --train` shows it.
    """
    if q.device.type == "cpu":
        return matmul_causal_attention(q, k, v, doc_ids=doc_ids)
    if doc_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.size(-2)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    same_doc = doc_ids[:, None, :, None] == doc_ids[:, None, None, :]  # (B, 1, T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal & same_doc)


def matmul_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, chunk: int = QUERY_CHUNK, doc_ids: Tensor | None = None
) -> Tensor:
    """Causal attention as batched matmuls, in blocks of `chunk` query rows.

    Block i (queries i·chunk ..) only multiplies against the keys it may see (0 .. its last row),
    so the masked upper triangle is mostly never computed: at T=512, chunk=128 does 5/8 of the
    full T×T work. Scores are in the inputs' dtype (bf16 under autocast, as in GPT-2/Megatron's
    unfused attention); softmax accumulates in fp32 either way. The backward is written out
    (_BlockCausalAttention): left to autograd, every block's slice of k and v would get its own
    full-size zero-filled gradient to be summed, ~4 % of a CPU training step.
    """
    return _BlockCausalAttention.apply(q, k, v, chunk, doc_ids)


def _future_mask(n: int, device: torch.device) -> Tensor:
    """(n, n) True above the diagonal: within a block's own square, row r must not see keys after r."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(diagonal=1)


class _BlockCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunk: int, doc_ids: Tensor | None) -> Tensor:
        T, scale = q.size(-2), q.size(-1) ** -0.5
        q = q * scale  # before the matmul: T×D values instead of T×T
        out = torch.empty_like(q)
        probs = []
        for start in range(0, T, chunk):
            end = min(start + chunk, T)
            scores = q[..., start:end, :] @ k[..., :end, :].transpose(-2, -1)  # (B, H, end-start, end)
            # Row r (position start + r) sees keys 0 .. start + r: all before the block, and the
            # lower triangle of its own square.
            scores[..., start:end].masked_fill_(_future_mask(end - start, q.device), float("-inf"))
            if doc_ids is not None:  # and nothing of another document packed in the same row
                other_doc = doc_ids[:, None, start:end, None] != doc_ids[:, None, None, :end]
                scores.masked_fill_(other_doc, float("-inf"))
            p = scores.softmax(dim=-1)
            out[..., start:end, :] = p @ v[..., :end, :]
            probs.append(p)
        ctx.save_for_backward(q, k, v, *probs)
        ctx.chunk, ctx.scale = chunk, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, *probs = ctx.saved_tensors  # q is already scaled
        T, chunk = q.size(-2), ctx.chunk
        # Keys and values get a gradient from every block at or after theirs, summed in the inputs' dtype:
        # under bf16 that is T/chunk - 1 extra roundings (3 at T=512), no coarser than the bf16 matmuls
        # they then flow through. Summing in fp32 measured 17 % slower attention (11.0 vs 9.4 ms/layer).
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for p, start in zip(probs, range(0, T, chunk)):
            end = min(start + chunk, T)
            g = grad_out[..., start:end, :]
            grad_v[..., :end, :] += p.transpose(-2, -1) @ g
            # softmax backward: p ⊙ (dp − Σ dp⊙p); masked keys have p = 0, so their score gradient is 0
            grad_scores = torch._softmax_backward_data(g @ v[..., :end, :].transpose(-2, -1), p, -1, p.dtype)
            grad_q[..., start:end, :] = grad_scores @ k[..., :end, :]
            grad_k[..., :end, :] += grad_scores.transpose(-2, -1) @ q[..., start:end, :]
        return grad_q * ctx.scale, grad_k, grad_v, None, None


# ---------------------------------------------------------------------------------------------
# The building blocks.


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 == self.weight.dtype:  # the lines below in one op (bit-identical on CPU, tested)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Statistics in fp32 even under bf16 (a mean of squares loses too much in 8 mantissa bits);
        # cast back before the weight, as Llama does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelSettings, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx  # which slot of a KV cache is ours
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        C = cfg.n_embd
        self.q = Linear(C, C, bias=False)
        self.k = Linear(C, C, bias=False)
        self.v = Linear(C, C, bias=False)
        self.o = Linear(C, C, bias=False)
        # Inference may replace q, k, v by one module computing all three in one matmul (ngpt.quantize).
        self.qkv: nn.Module | None = None

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) → q, k, v (B, n_head, T, head_dim), before RoPE: heads become a batch dimension."""
        B, T, C = x.shape
        qkv = self.qkv(x).split(C, dim=-1) if self.qkv is not None else (self.q(x), self.k(x), self.v(x))
        return tuple(t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in qkv)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None = None, doc_ids: Tensor | None = None
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.project(x)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        S = k.size(2)  # keys visible: the cached past plus these T
        if S == T:  # no past: plain causal attention
            y = causal_attention(q, k, v, doc_ids)
        elif T == 1:  # one new token decoding: it may see every cached key
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # T new tokens after a cached past: query i sees keys 0 .. S-T+i (is_causal would align top-left)
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU, as Llama: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelSettings) -> None:
        super().__init__()
        d_ff = cfg.ffn_dim
        self.gate = Linear(cfg.n_embd, d_ff, bias=False)
        self.up = Linear(cfg.n_embd, d_ff, bias=False)
        self.down = Linear(d_ff, cfg.n_embd, bias=False)
        # Inference may replace gate and up by one module computing both in one matmul (ngpt.quantize).
        self.gate_up: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1) if self.gate_up is not None else (self.gate(x), self.up(x))
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelSettings, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)
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
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one V×C matrix reads tokens in and out
        # Not in the state dict: derived from the config, and absent from Llama checkpoints.
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Each residual branch adds to the stream 2·L times in all; scale their output projections so
        # the stream's variance at init does not grow with depth (GPT-2).
        for block in self.blocks:
            nn.init.normal_(block.attn.o.weight, std=INIT_STD / math.sqrt(2 * cfg.n_layer))
            nn.init.normal_(block.mlp.down.weight, std=INIT_STD / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)

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
        what training wants: only the loss, and None in the logits' place. On the CPU it comes from the
        fused head + cross entropy (linear_cross_entropy), which never holds the (B, T, V) logits; its
        row blocks were tuned there, so other devices keep the plain cross entropy until measured.
        doc_ids (B, T): for rows packing several documents (SFT batches), attention stays within each.
        """
        B, T = idx.shape
        if start_pos + T > self.cfg.seq_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + T - 1} do not fit model.seq_len={self.cfg.seq_len}; "
                "pass at most seq_len tokens (truncate the prompt or start a new context)"
            )
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits={logits!r}; choose 'all', 'last' or 'none'")
        if logits == "none" and targets is None:
            raise ValueError("logits='none' returns only the loss, so it needs targets")
        if logits == "last" and targets is not None:
            raise ValueError("logits='last' gives one position; a loss over targets needs logits='all' or 'none'")
        if doc_ids is not None and kv_cache is not None:
            raise ValueError("doc_ids are for whole packed rows (training), not for KV-cache generation")
        cos = self.rope_cos[start_pos : start_pos + T]
        sin = self.rope_sin[start_pos : start_pos + T]
        x = self.tok_emb(idx)
        # A cache must see each update once, so recomputation (checkpointing) is for training only.
        recompute = self.activation_checkpointing and kv_cache is None and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, cos, sin, None, doc_ids, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache, doc_ids)
        x = self.norm(x)
        if logits == "none" and x.device.type == "cpu":
            if not isinstance(self.lm_head, nn.Linear):
                raise ValueError("logits='none' trains through the head's weight; this model's head is quantized (inference only)")
            return None, linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        out = self.lm_head(x[:, -1:] if logits == "last" else x)
        loss = None
        if targets is not None:
            # fp32 for the softmax over V: bf16 log-probs are too coarse for a loss that moves by 1e-3.
            loss = F.cross_entropy(
                out.float().flatten(0, 1), targets[:, -out.size(1) :].reshape(-1), ignore_index=IGNORE_INDEX
            )
        return (None if logits == "none" else out), loss

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (the tied head is the embedding); non_embedding drops the V×C table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), the PaLM/nanoGPT estimate used for MFU.

        6N for the weight matmuls (N includes the tied matrix once: the embedding lookup is free but
        the head matmul is not), plus 12·L·C·T for attention scores and weighted sums at context T
        (counted as if unmasked, by the same convention).
        """
        T = self.cfg.seq_len if seq_len is None else seq_len
        return 6 * self.num_params() + 12 * self.cfg.n_layer * self.cfg.n_embd * T


def param_count(cfg: ModelSettings) -> int:
    """The parameter count of a model of these shapes, without allocating weights (built on `meta`).

    Also right for a quantized model, whose int8 weights are buffers, not parameters.
    """
    with torch.device("meta"):
        return GPT(cfg).num_params()


def llama_fields(cfg: ModelSettings) -> dict:
    """The LlamaConfig fields that make transformers' LlamaForCausalLM exactly this model's shape.

    Shared by the export's config.json and the benchmark's comparison model (ngpt.bench.speed).
    """
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
    }
