"""Tests for ngpt/quantize.py: int8 weights multiply like their dequantised selves; an int8 model stays close.

    pytest tests/test_quantize.py
"""

from __future__ import annotations

import copy

import pytest
import torch

from fixtures import classic_model
from ngpt.engine import Engine
from ngpt.inference import NO_AUTOCAST
from ngpt.sampling import SamplingParams
from ngpt.model import GPT
from ngpt.quantize import MATRIX_ROWS, Int8Linear, int8_supported, quantize_int8
from ngpt.settings import ModelSettings

pytestmark = pytest.mark.skipif(not int8_supported(torch.device("cpu")), reason="no int8 CPU kernel in this torch")


def test_rounding_error_is_at_most_half_a_step_per_row():
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 40)[:, None]
    q = Int8Linear(w)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() <= 127
    step = q.scale.float()[:, None]  # the scale the kernel uses (bf16, rounded up from absmax / 127)
    assert (step >= w.abs().amax(dim=1, keepdim=True) / 127).all() and (step <= w.abs().amax(dim=1, keepdim=True) / 126).all()
    assert ((q.dequantized() - w).abs() <= step / 2 + 1e-7).all()


@pytest.mark.parametrize("rows", [1, 3, MATRIX_ROWS, 50])  # the int8 kernel below MATRIX_ROWS, bf16 matmul from it
def test_forward_equals_the_dequantized_matmul_in_the_input_dtype(rows):
    g = torch.Generator().manual_seed(rows)
    q = Int8Linear(torch.randn(48, 32, generator=g))
    x = torch.randn(2, rows, 32, generator=g)
    y = q(x)
    assert y.shape == (2, rows, 48) and y.dtype == torch.float32
    reference = x.bfloat16().float() @ q.dequantized().T
    torch.testing.assert_close(y, reference, rtol=0.02, atol=0.05)


def tiny_model() -> GPT:
    torch.manual_seed(0)
    # the classic Llama shape (SwiGLU's gate+up fused, a tied head); each recipe option: test_model_options.py
    return GPT(ModelSettings(vocab_size=211, seq_len=64, n_embd=64, n_layer=2, n_head=4, d_ff=128, **classic_model())).eval()


def test_quantized_model_keeps_fp32_outside_the_matmuls_and_fuses_projections():
    model = quantize_int8(tiny_model())
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert isinstance(attn.qkv, Int8Linear) and attn.qkv.out_features == 3 * 64
    assert isinstance(mlp.gate_up, Int8Linear) and mlp.gate_up.out_features == 2 * 128
    assert not hasattr(attn, "q") and not hasattr(mlp, "gate")
    assert isinstance(model.lm_head, Int8Linear) and model.tok_emb.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_quantized_logits_stay_close_to_fp32():
    fp32 = tiny_model()
    int8 = quantize_int8(copy.deepcopy(fp32))
    idx = torch.randint(0, 211, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, _ = fp32(idx)
        b, _ = int8(idx)
    # Relative to the spread of the logits: well under a percent of a standard deviation on average.
    assert (a - b).abs().mean() < 0.01 * a.std()
    assert (a - b).abs().max() < 0.1 * a.std()


def test_int8_engine_decodes_with_cache_and_traces_attention():
    model = quantize_int8(tiny_model())
    tok = type("Tok", (), {"vocab_size": 211, "eot_id": -1, "path": "ids", "decode": lambda self, ids: ""})()
    engine = Engine(model, tok, "cpu", NO_AUTOCAST)
    result = engine.generate(list(range(1, 21)), SamplingParams(max_new_tokens=6, temperature=0, trace=True, trace_layer=-1))
    assert len(result.ids) == 6 and [s.cache_len for s in result.steps] == list(range(20, 26))
    for step in result.steps:
        assert len(step.attention) == step.cache_len and sum(step.attention) == pytest.approx(1, abs=1e-4)
        assert step.logprob <= 0 and step.top_ids[0] == step.token_id  # greedy picks the top alternative


def test_a_quantized_model_refuses_to_train():
    model = quantize_int8(tiny_model())
    idx = torch.randint(0, 211, (1, 8))
    with pytest.raises(ValueError, match="quantized"):
        model(idx, idx, logits="none")
