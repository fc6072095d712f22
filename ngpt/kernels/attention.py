"""Causal self-attention for q, k, v of shape (B, H, T, D): the fastest exact path per device and case.

    from ngpt.kernels.attention import attention
    y = attention(q, k, v)                    # training / prefill: T queries over the same T keys, causal
    y = attention(q, k_cache, v_cache)        # decoding: T new queries over S >= T keys (the cache)
    y = attention(q, k, v, doc_ids=doc_ids)   # packed rows: a position sees only its own document

On GPUs every case is torch's fused SDPA. On CPUs the fused (flash) kernel is slower than plain
matmuls for training shapes, so whole sequences go through `matmul_causal_attention`: measured fwd+bwd
at B=4 H=6 T=512 D=64 on a 2-core AVX512-BF16 CPU (Zen 5), SDPA 26 ms (bf16) / 30 ms (fp32) per layer
vs 9.4 / 18 ms. `ngpt bench speed --train` shows it on the machine at hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

QUERY_CHUNK = 128  # query rows per block in matmul_causal_attention (64/128/256/512: 10.5/9.4/11.2/13.3 ms bf16)


def attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ/√D + causal mask) v, where the T queries are the last T of the S keys' positions.

    doc_ids (B, T), only with S == T (whole packed rows, SFT): a position also sees nothing of another
    document packed in the same row, as if each were alone (RoPE is relative, so offsets do not matter).
    """
    T, S = q.size(-2), k.size(-2)
    if S == T:  # no past: plain causal attention
        return causal_attention(q, k, v, doc_ids)
    if doc_ids is not None:
        raise ValueError("doc_ids are for whole packed rows (training), not for attention over a KV cache")
    if T == 1:  # one new token: it may see every key
        return F.scaled_dot_product_attention(q, k, v)
    # T new tokens after a cached past: query i sees keys 0 .. S-T+i (is_causal would align top-left)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, doc_ids: Tensor | None = None) -> Tensor:
    """Causal attention of a whole sequence over itself (q, k, v all (B, H, T, D)).

    With doc_ids on a GPU: SDPA with a dense (B, 1, T, T) mask, which rules out the flash kernel
    (unmeasured: no GPU here).
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
