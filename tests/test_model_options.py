"""Each architecture option (ModelSettings) on its own: trains, decodes with the KV cache exactly as
without it, survives int8, and exports to the transformers architecture that reproduces its logits
(or is refused by name).

    pytest tests/test_model_options.py
"""

from __future__ import annotations

import copy

import pytest
import torch

from fixtures import classic_model
from ngpt.engine import Engine
from ngpt.export.hf import ExportError, hf_config, hf_fields, hf_model_type, hf_state_dict
from ngpt.inference import NO_AUTOCAST
from ngpt.kernels.linear_cross_entropy import linear_cross_entropy
from ngpt.kernels.lm_loss import cross_entropy, softcap
from ngpt.model import GPT
from ngpt.quantize import quantize_int8
from ngpt.sampling import SamplingParams
from ngpt.settings import ModelSettings

V = 101
CLASSIC = classic_model()  # every option below is one change from the classic Llama (configs/classic.json)
OPTIONS = {
    "baseline": {},
    "defaults": {key: ModelSettings.model_fields[key].default for key in CLASSIC},  # the shipped recipe: must export
    "qk_norm": {"qk_norm": True},
    "relu2": {"mlp": "relu2"},
    "untied": {"tie_embeddings": False},
    "softcap": {"logit_softcap": 15.0},
    "zero_init": {"zero_init": True, "tie_embeddings": False},
    "no_gains": {"norm_gains": False},
    "embed_norm": {"embed_norm": True},
    "modern": {"qk_norm": True, "tie_embeddings": False, "zero_init": True, "norm_gains": False, "embed_norm": True},
    "modern_relu2": {"mlp": "relu2", "tie_embeddings": False, "zero_init": True, "norm_gains": False, "embed_norm": True},
}
REFUSED = {"softcap": "logit_softcap", "qk_norm_relu2": "qk_norm with model.mlp=relu2"}


def cfg_of(**opts) -> ModelSettings:
    return ModelSettings(vocab_size=V, seq_len=48, n_embd=32, n_layer=2, n_head=4, **{**CLASSIC, **opts})


def trained(cfg: ModelSettings, steps: int = 3) -> GPT:
    """A few AdamW steps, so zero-initialised weights are no longer zero and gains are no longer ones."""
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, V, (4, 32), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:], logits="none")
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


class Tok:
    """What Engine needs of a tokenizer for a model of random ids."""

    path, eot_id, vocab_size = "ids", -1, V

    def decode(self, ids) -> str:
        return ""


@pytest.mark.parametrize("name", OPTIONS)
def test_option_trains_with_finite_loss_and_gradients(name):
    model = GPT(cfg_of(**OPTIONS[name]))
    idx = torch.randint(0, V, (2, 33), generator=torch.Generator().manual_seed(0))
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(idx[:, :-1], idx[:, 1:], logits="none")
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()


@pytest.mark.parametrize("name", OPTIONS)
def test_option_kv_cache_greedy_equals_no_cache_greedy(name):
    model = trained(cfg_of(**OPTIONS[name]))
    prompt = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    params = SamplingParams(max_new_tokens=20, temperature=0)
    cached = Engine(model, Tok(), "cpu", NO_AUTOCAST).generate(prompt, params).ids
    uncached = Engine(model, Tok(), "cpu", NO_AUTOCAST, use_kv_cache=False).generate(prompt, params).ids
    assert cached == uncached and len(cached) == 20
    int8 = Engine(quantize_int8(copy.deepcopy(model)), Tok(), "cpu", NO_AUTOCAST).generate(prompt, params)
    assert len(int8.ids) == 20  # int8 decodes every option (its quality: ngpt bench quality)


@pytest.mark.parametrize("name", [n for n in OPTIONS if n not in REFUSED])
def test_option_exports_to_transformers_with_equal_logits(name):
    transformers = pytest.importorskip("transformers")
    cfg = cfg_of(**OPTIONS[name])
    model = trained(cfg)
    config = transformers.AutoConfig.for_model(hf_model_type(cfg), **hf_fields(cfg))
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    missing, unexpected = hf.load_state_dict(hf_state_dict(model.state_dict(), cfg, torch.float32), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}  # a tied head is the embedding
    idx = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(input_ids=idx).logits
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("opts, needle", [({"logit_softcap": 15.0}, "model.logit_softcap=15"),
                                          ({"qk_norm": True, "mlp": "relu2"}, "model.qk_norm with model.mlp=relu2")])
def test_an_option_transformers_cannot_express_is_refused_by_name(opts, needle):
    with pytest.raises(ExportError, match=needle):
        hf_config(cfg_of(**opts), None, "float32")


def test_softcapped_fused_loss_equals_the_plain_one_in_value_and_gradient():
    gen = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(70, 16, generator=gen)).requires_grad_()
    w = torch.randn(V, 16, generator=gen).requires_grad_()
    t = torch.randint(0, V, (70,), generator=gen)
    t[::7] = -100
    fused = linear_cross_entropy(x, w, t, softcap=5.0)
    gx, gw = torch.autograd.grad(fused, (x, w))
    plain = cross_entropy(softcap(x @ w.T, 5.0), t)
    px, pw = torch.autograd.grad(plain, (x, w))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, px, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, pw, rtol=1e-4, atol=1e-6)
    assert softcap(torch.tensor([1e4, -1e4]), 5.0).abs().max() <= 5.0
