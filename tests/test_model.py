"""Tests for ngpt/model.py: shapes, loss, tying, RoPE, causality, the KV-cache seam, checkpointing.

    pytest tests/test_model.py
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fixtures import classic_model
from ngpt.export.hf import hf_fields, hf_state_dict
from ngpt.kernels.attention import matmul_causal_attention
from ngpt.model import GPT, apply_rope, rope_tables
from ngpt.settings import ModelSettings


def tiny_cfg(**overrides) -> ModelSettings:
    # the classic Llama architecture: what these tests (and the transformers comparison) are about;
    # the recipe's options are tested in test_model_options.py
    base = dict(vocab_size=97, seq_len=64, n_embd=32, n_layer=2, n_head=4, d_ff=None, dropout=0.0, **classic_model())
    return ModelSettings(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_cfg(**overrides))


def random_idx(B: int, T: int, V: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


class ListKVCache:
    """The simplest cache that honours the protocol: per layer, concatenate along time."""

    def __init__(self) -> None:
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx in self.k:
            k = torch.cat((self.k[layer_idx], k), dim=2)
            v = torch.cat((self.v[layer_idx], v), dim=2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v


def test_forward_shape_and_finite():
    model = tiny_model()
    logits, loss = model(random_idx(3, 20))
    assert logits.shape == (3, 20, 97)
    assert loss is None
    assert torch.isfinite(logits).all()


def test_loss_ignores_minus_100_and_equals_manual_ce():
    model = tiny_model()
    idx = random_idx(2, 16)
    targets = random_idx(2, 16, seed=2)
    targets[0, :5] = -100
    targets[1, 10:] = -100
    logits, loss = model(idx, targets)
    logp = F.log_softmax(logits.double(), dim=-1)
    keep = targets != -100
    manual = -logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()
    assert loss.item() == pytest.approx(manual.item(), abs=1e-5)
    # At init the model is near-uniform, so the loss sits near ln V (sanity of init scale).
    assert abs(loss.item() - math.log(97)) < 0.5


def test_embeddings_are_tied():
    model = tiny_model()
    assert model.lm_head.weight is model.tok_emb.weight
    _, loss = model(random_idx(2, 8), random_idx(2, 8, seed=3))
    loss.backward()
    # One gradient: from the lookup and the head together (a never-used row still gets head gradient).
    assert model.tok_emb.weight.grad is not None
    assert model.tok_emb.weight.grad.abs().sum(dim=1).gt(0).all()


def test_init_scales():
    model = tiny_model(n_embd=256, n_layer=8, n_head=4, vocab_size=4096)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.q.weight.std().item() == pytest.approx(0.02, rel=0.05)
    scaled = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[3].attn.o.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert model.blocks[3].mlp.down.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert all("bias" not in name for name, _ in model.named_parameters())


def test_init_std_follows_the_width_rule_and_embed_init_std_sets_the_table():
    model = tiny_model(n_embd=256, n_layer=8, n_head=4, vocab_size=4096, init_std=None, embed_init_std=0.8,
                       tie_embeddings=False)
    width = 256 ** -0.5
    assert model.blocks[0].attn.q.weight.std().item() == pytest.approx(width, rel=0.05)
    assert model.blocks[3].mlp.down.weight.std().item() == pytest.approx(width / math.sqrt(2 * 8), rel=0.05)
    assert model.lm_head.weight.std().item() == pytest.approx(width, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.8, rel=0.05)


def complex_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent float64 reference: x_i + j·x_{i+D/2} times e^{j·p·θ^(-2i/D)} at position p."""
    D = x.shape[-1]
    half = D // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    angles = positions.double()[:, None] * freqs
    rot = torch.polar(torch.ones_like(angles), angles)
    out = z * rot
    return torch.cat((out.real, out.imag), dim=-1)


def test_rope_matches_complex_rotation_at_1024():
    T, D, theta = 1024, 64, 10000.0
    model = GPT(tiny_cfg(seq_len=T, n_embd=D * 2, n_head=2))
    assert model.rope_cos.shape == (T, D)
    x = torch.randn(2, 3, T, D, generator=torch.Generator().manual_seed(0))
    ours = apply_rope(x, model.rope_cos, model.rope_sin)
    ref = complex_rope(x, torch.arange(T), theta)
    # fp32 angles at position ~1000 carry ~1e-4 rad of rounding; a wrong layout is off by O(1).
    assert (ours.double() - ref).abs().max().item() < 5e-4
    assert torch.allclose(ours.double()[:, :, :64], ref[:, :, :64], atol=1e-5)
    # Rotation preserves norms.
    assert torch.allclose(ours.norm(dim=-1), x.norm(dim=-1), rtol=1e-4)


def test_rope_dot_product_depends_only_on_relative_position():
    T, D = 1024, 64
    cos, sin = rope_tables(D, T, 10000.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q.view(1, 1, 1, D), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, D), cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    for offset in (0, 1, 7, 300):
        near, far = score(10 + offset, 10), score(1000, 1000 - offset)
        assert near == pytest.approx(far, abs=2e-3)
    assert score(1, 0) != pytest.approx(score(300, 0), abs=1e-2)  # and it does depend on the difference


def test_causal_future_tokens_do_not_change_past_logits():
    model = tiny_model().eval()
    idx = random_idx(2, 24)
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 97
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("chunks", [(5, 1, 1, 1, 1, 1, 1, 1), (5, 3, 1, 2, 1)])
def test_kv_cache_prefill_and_decode_match_full_forward(chunks):
    model = tiny_model().eval()
    idx = random_idx(2, sum(chunks))
    with torch.no_grad():
        full, _ = model(idx)
        cache, pos, pieces = ListKVCache(), 0, []
        for n in chunks:  # prefill, then decode; (5, 3, ...) also prefills a chunk after a cached past
            logits, _ = model(idx[:, pos : pos + n], start_pos=pos, kv_cache=cache)
            pieces.append(logits)
            pos += n
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    assert cache.k[1].shape == (2, 4, pos, 8)


def test_positions_beyond_seq_len_are_a_clear_error():
    model = tiny_model(seq_len=16)
    with pytest.raises(ValueError, match="seq_len=16"):
        model(random_idx(1, 4), start_pos=14)


def test_activation_checkpointing_gives_same_loss_and_grads():
    model = tiny_model(dropout=0.1).train()  # dropout on: checkpointing must replay the same masks
    idx, targets = random_idx(2, 16), random_idx(2, 16, seed=4)

    def loss_and_grads() -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        _, loss = model(idx, targets)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain = loss_and_grads()
    model.activation_checkpointing = True
    ckpt_loss, ckpt = loss_and_grads()
    assert ckpt_loss == plain_loss
    for name, grad in plain.items():
        assert torch.allclose(grad, ckpt[name], atol=1e-6), name


def test_num_params_and_flops_match_formula():
    cfg = tiny_cfg(d_ff=96)
    model = GPT(cfg)
    V, C, L, F_ = cfg.vocab_size, cfg.n_embd, cfg.n_layer, 96
    per_layer = 4 * C * C + 3 * C * F_ + 2 * C
    total = V * C + L * per_layer + C
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - V * C
    assert model.flops_per_token() == 6 * total + 12 * L * C * cfg.seq_len
    assert model.flops_per_token(seq_len=8) == 6 * total + 12 * L * C * 8


@pytest.mark.parametrize(
    ("n_embd", "d_ff", "expected"),
    [(384, None, 1024), (64, None, 192), (768, None, 2048), (96, None, 256), (64, 100, 100)],
)
def test_d_ff_default_rounds_up_to_64(n_embd, d_ff, expected):
    assert ModelSettings(n_embd=n_embd, n_head=4, d_ff=d_ff, mlp="swiglu").ffn_dim == expected
    assert ModelSettings(n_embd=n_embd, n_head=4, d_ff=d_ff, mlp="relu2").ffn_dim == (d_ff or 4 * n_embd)


def test_bf16_autocast_forward_and_backward():
    model = tiny_model()
    idx, targets = random_idx(2, 16), random_idx(2, 16, seed=5)
    _, fp32_loss = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(fp32_loss.item(), abs=0.05)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_matches_hf_llama_logits():
    transformers = pytest.importorskip("transformers")
    cfg = tiny_cfg(seq_len=64, norm_eps=1e-5, rope_theta=10000.0)
    model = tiny_model().eval()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_fields(cfg))).eval()
    sd = hf_state_dict(model.state_dict(), cfg, torch.float32)  # the renames the model docstring lists
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}
    assert torch.equal(hf.lm_head.weight, model.tok_emb.weight)
    idx = random_idx(2, cfg.seq_len)
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(input_ids=idx).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


def assert_same_values_and_grads(ours: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    """ours == ref, and so are their gradients with respect to `inputs` for one random output gradient."""
    torch.testing.assert_close(ours, ref)
    out_grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, inputs, out_grad), torch.autograd.grad(ref, inputs, out_grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("T", [1, 5, 16, 47])
@pytest.mark.parametrize("chunk", [4, 16, 128])
def test_matmul_causal_attention_equals_sdpa(T, chunk):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ours = matmul_causal_attention(q, k, v, chunk)
    assert_same_values_and_grads(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v))


def test_logits_last_and_none_agree_with_all():
    model = tiny_model()
    idx, targets = random_idx(2, 24), random_idx(2, 24, seed=4)
    targets[0, :7] = -100
    full, loss = model(idx, targets)
    last, _ = model(idx, logits="last")
    torch.testing.assert_close(last, full[:, -1:])
    loss.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    none, fused = model(idx, targets, logits="none")
    assert none is None
    assert fused.item() == pytest.approx(loss.item(), rel=1e-5)
    fused.backward()
    for a, p in zip(plain_grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="needs targets"):
        model(idx, logits="none")
    with pytest.raises(ValueError, match="choose 'all', 'last' or 'none'"):
        model(idx, logits="first")
    with pytest.raises(ValueError, match="a loss over targets needs"):
        model(idx, targets, logits="last")


def test_torch_compile_trains_like_eager():
    """`compile: true` in training: the custom attention, fused loss and oneDNN linears all trace."""
    model = tiny_model(n_layer=1)
    idx, targets = random_idx(2, 32), random_idx(2, 32, seed=6)
    _, eager = model(idx, targets, logits="none")
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, compiled = torch.compile(model)(idx, targets, logits="none")
    compiled.backward()
    assert compiled.item() == pytest.approx(eager.item(), abs=1e-5)
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)


def test_doc_ids_keep_packed_documents_apart():
    """A document packed after another gets exactly the logits it gets alone."""
    model = tiny_model().double()
    a, b = random_idx(1, 11, seed=7), random_idx(1, 13, seed=8)
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 11 + [1] * 13])
    alone, _ = model(b)
    together, _ = model(packed, doc_ids=doc_ids)
    torch.testing.assert_close(together[:, 11:], alone)
    leaky, _ = model(packed)  # without doc_ids, b attends to a
    assert (leaky[:, 11:] - alone).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not for KV-cache generation"):
        model(b, doc_ids=doc_ids[:, :13], kv_cache=ListKVCache())


@pytest.mark.parametrize("chunk", [4, 128])
def test_matmul_causal_attention_with_doc_ids_equals_masked_sdpa(chunk):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 19, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    doc_ids = torch.tensor([[0] * 5 + [1] * 9 + [2] * 5, [0] * 19])
    mask = torch.ones(19, 19, dtype=torch.bool).tril() & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    ours = matmul_causal_attention(q, k, v, chunk, doc_ids=doc_ids)
    assert_same_values_and_grads(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v))


def test_bf16_matmul_causal_attention_tracks_fp32_sdpa():
    """The path bf16 training runs (bf16 scores and probabilities): close to fp32 SDPA, gradients too."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 300, 16, generator=g) for _ in range(3))
    out_grad = torch.randn(2, 3, 300, 16, generator=g)
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=True)
    ref_grads = torch.autograd.grad(ref, ref_in, out_grad)
    ours_in = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    ours = matmul_causal_attention(*ours_in)
    ours_grads = torch.autograd.grad(ours, ours_in, out_grad.bfloat16())
    torch.testing.assert_close(ours.float(), ref, rtol=0.05, atol=0.03)
    for a, b in zip(ours_grads, ref_grads):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05)


def test_fp32_rmsnorm_fast_path_is_bit_identical_to_the_formula():
    from ngpt.model import RMSNorm

    norm = RMSNorm(48, 1e-5)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 17, 48) * 4
    formula = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(norm(x), formula)


def test_bf16_parameter_free_rmsnorm_one_op_equals_the_fp32_statistics_formula():
    """The gain-free norm on bf16 activations (the default model under autocast) takes F.rms_norm: same bits, both ways."""
    from ngpt.model import RMSNorm

    norm = RMSNorm(48, 1e-5, gain=False)
    x = (torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    grad = torch.randn(3, 17, 48, generator=torch.Generator().manual_seed(1)).bfloat16()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = norm(a)
    b32 = b.float()
    formula = (b32 * torch.rsqrt(b32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, formula)
    out.backward(grad)
    formula.backward(grad)
    assert torch.equal(a.grad, b.grad)
