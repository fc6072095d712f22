"""Tests for ngpt/engine.py: KV cache, cached vs uncached decoding, stopping, sampling, tracing, streaming.

    pytest tests/test_engine.py

A tiny random-init model on the CPU in fp32, with the session's tiny sentencepiece tokenizer.
"""

from __future__ import annotations

import math

import pytest
import torch

from ngpt.chat_format import prompt_ids
from ngpt.device import Precision
from ngpt.chat_format import fit_messages
from ngpt.engine import Engine, KVCache
from ngpt.sampling import SamplingParams, apply_repetition_penalty, top_k_filter, top_p_filter
from ngpt.tokenizer import TextStream
from ngpt.model import GPT
from ngpt.settings import GenerationSettings, ModelSettings

FP32 = Precision(False, None, False)
SEQ_LEN = 64


def tiny_model(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelSettings(vocab_size=vocab_size, seq_len=SEQ_LEN, n_embd=32, n_layer=2, n_head=4, dropout=0.0)
    return GPT(cfg)


@pytest.fixture(scope="module")
def model(tiny_tokenizer) -> GPT:
    return tiny_model(tiny_tokenizer.vocab_size)


@pytest.fixture
def engine(model, tiny_tokenizer) -> Engine:
    return Engine(model, tiny_tokenizer, "cpu", FP32)


@pytest.fixture
def prompt(tiny_tokenizer) -> list[int]:
    return prompt_ids(tiny_tokenizer, [{"role": "user", "content": "The river and the mountain light."}])


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0, **kw)


def no_eot(tok, n: int, **kw) -> SamplingParams:
    """Random weights may pick eot at any step; banning it makes the length deterministic."""
    return SamplingParams(max_new_tokens=n, banned_ids=(tok.eot_id,), **kw)


# -- KV cache ------------------------------------------------------------------------------------


def test_kv_cache_update_writes_in_place_and_returns_views():
    cache = KVCache(n_layer=2, batch_size=1, n_head=3, max_len=10, head_dim=4)
    parts = [torch.randn(1, 3, t, 4) for t in (4, 1, 2)]
    seen_k = []
    storage = None
    for part in parts:
        for layer in range(2):
            assert cache.length == sum(p.size(2) for p in seen_k)  # advances only after the last layer
            k_all, v_all = cache.update(layer, part + layer, -part)
        seen_k.append(part)
        expected = torch.cat(seen_k, dim=2)
        assert cache.length == expected.size(2)
        assert k_all.shape == (1, 3, cache.length, 4)
        torch.testing.assert_close(k_all, expected + 1)  # layer 1's slot, not layer 0's
        torch.testing.assert_close(v_all, -expected)
        torch.testing.assert_close(cache.k[0, :, :, : cache.length], expected)
        assert k_all.untyped_storage().data_ptr() == cache.k.untyped_storage().data_ptr()  # a view
        storage = storage or cache.k.untyped_storage().data_ptr()
        assert cache.k.untyped_storage().data_ptr() == storage  # allocated once, never regrown
    with pytest.raises(ValueError, match="overflows"):
        cache.update(0, torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4))


def test_prefill_and_decode_logits_match_full_forward(engine, model, prompt):
    ids = torch.tensor([prompt + [7, 9, 11]])
    full, _ = model(ids)
    cache = engine.new_cache(ids.size(1))
    P = len(prompt)
    torch.testing.assert_close(engine.prefill(ids[:, :P], cache), full[:, P - 1], atol=1e-5, rtol=1e-5)
    for t in range(P, ids.size(1)):
        torch.testing.assert_close(engine.decode_step(ids[:, t], cache), full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length == ids.size(1)


# -- decoding ------------------------------------------------------------------------------------


def test_cached_and_uncached_greedy_agree(model, tiny_tokenizer, prompt):
    params = no_eot(tiny_tokenizer, 20, temperature=0, trace=True, top_alternatives=5)
    cached = Engine(model, tiny_tokenizer, "cpu", FP32).generate(prompt, params)
    uncached = Engine(model, tiny_tokenizer, "cpu", FP32, use_kv_cache=False).generate(prompt, params)
    assert cached.ids == uncached.ids and len(cached.ids) == 20
    for a, b in zip(cached.steps, uncached.steps):
        assert a.cache_len == b.cache_len
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.top_logprobs == pytest.approx(b.top_logprobs, abs=1e-4)


def test_stops_on_eot_and_returns_it(engine, tiny_tokenizer, prompt):
    eot = tiny_tokenizer.eot_id
    # Only eot and two other ids are allowed, so eot comes within a few sampled steps.
    allowed = {eot, 10, 11}
    banned = tuple(i for i in range(tiny_tokenizer.vocab_size) if i not in allowed)
    lengths = []
    for seed in range(5):
        params = SamplingParams(max_new_tokens=40, temperature=1.0, top_k=0, top_p=1.0, banned_ids=banned, seed=seed)
        result = engine.generate(prompt, params)
        assert result.finish_reason == "eot" and result.steps[-1].finish_reason == "eot"
        assert result.ids[-1] == eot and eot not in result.ids[:-1]
        assert all(s.finish_reason is None for s in result.steps[:-1])
        lengths.append(len(result.ids))
    assert max(lengths) > 1  # it really generated before stopping, not only an immediate eot


def test_max_new_tokens_respected(engine, tiny_tokenizer, prompt):
    result = engine.generate(prompt, no_eot(tiny_tokenizer, 7, temperature=0))
    assert len(result.ids) == 7
    assert result.finish_reason == "length"
    assert tiny_tokenizer.eot_id not in result.ids


def test_same_seed_repeats_and_different_seeds_differ(engine, tiny_tokenizer, prompt):
    def run(seed: int) -> list[int]:
        return engine.generate(prompt, no_eot(tiny_tokenizer, 20, temperature=1.0, top_k=0, top_p=1.0, seed=seed)).ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_unseeded_sampling_reports_the_seed_it_used(engine, tiny_tokenizer, prompt):
    first = engine.generate(prompt, no_eot(tiny_tokenizer, 10, temperature=1.0))
    assert first.seed is not None
    again = engine.generate(prompt, no_eot(tiny_tokenizer, 10, temperature=1.0, seed=first.seed))
    assert again.ids == first.ids


@pytest.mark.parametrize("filters", [dict(top_k=1, top_p=1.0), dict(top_k=0, top_p=1e-6)])
def test_top_k_1_and_tiny_top_p_equal_greedy(engine, tiny_tokenizer, prompt, filters):
    reference = engine.generate(prompt, no_eot(tiny_tokenizer, 15, temperature=0)).ids
    sampled = engine.generate(prompt, no_eot(tiny_tokenizer, 15, temperature=1.0, seed=3, **filters)).ids
    assert sampled == reference


def test_banned_ids_never_appear(engine, tiny_tokenizer, prompt):
    greedy_ids = engine.generate(prompt, no_eot(tiny_tokenizer, 15, temperature=0)).ids
    banned = tuple(set(greedy_ids)) + (tiny_tokenizer.eot_id,)
    for temperature in (0.0, 2.0):
        params = SamplingParams(max_new_tokens=30, temperature=temperature, top_k=0, top_p=1.0, banned_ids=banned, seed=0)
        ids = engine.generate(prompt, params).ids
        assert len(ids) == 30 and not set(ids) & set(banned)


def test_padded_model_vocab_never_yields_ids_without_text(tiny_tokenizer, prompt):
    engine = Engine(tiny_model(tiny_tokenizer.vocab_size + 40), tiny_tokenizer, "cpu", FP32)
    ids = engine.generate(prompt, no_eot(tiny_tokenizer, 40, temperature=3.0, top_k=0, top_p=1.0, seed=0)).ids
    assert max(ids) < tiny_tokenizer.vocab_size



def test_repetition_penalty_steers_generation_away_from_seen_tokens(engine, tiny_tokenizer, prompt):
    plain = engine.generate(prompt, no_eot(tiny_tokenizer, 20, temperature=0)).ids
    assert len(set(plain)) < len(plain) or set(plain) & set(prompt)  # without a penalty it repeats
    # A huge penalty pushes every seen logit to ~0 or far below; unseen positive logits then win.
    penalized = engine.generate(prompt, no_eot(tiny_tokenizer, 20, temperature=0, repetition_penalty=1e4)).ids
    assert len(set(penalized)) == len(penalized) and not set(penalized) & set(prompt)

# -- logits processors ---------------------------------------------------------------------------


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -0.5])
    seen = torch.tensor([True, True, False, False, True])
    out = apply_repetition_penalty(logits, seen, 2.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0]))
    assert (out[seen] < logits[seen]).all() and torch.equal(out[~seen], logits[~seen])


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([0.5, 0.05, 0.3, 0.15]))
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [True, False, True, False]
    assert torch.equal(top_k_filter(logits, 0), logits)
    # 0.5 < 0.7 so the second most likely (0.3) joins; then 0.8 >= 0.7 and the rest go.
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [True, False, True, False]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, False, False, False]
    assert torch.isfinite(top_p_filter(logits, 1e-9)).tolist() == [True, False, False, False]


def test_sampling_params_validate_and_follow_settings():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    params = SamplingParams.from_settings(GenerationSettings(temperature=0.0, seed=5), trace=True)
    assert (params.temperature, params.seed, params.trace) == (0.0, 5, True)
    assert SamplingParams().top_k == GenerationSettings().top_k


# -- context limits ------------------------------------------------------------------------------


def test_context_overflow_is_a_clear_error_before_any_forward(engine, model, prompt):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        too_many = SEQ_LEN - len(prompt) + 1
        with pytest.raises(ValueError) as err:
            engine.stream(prompt, greedy(too_many))  # raised at the call, not at the first next()
        message = str(err.value)
        assert str(len(prompt)) in message and f"seq_len={SEQ_LEN}" in message
        assert f"max_new_tokens to {SEQ_LEN - len(prompt)}" in message
        assert calls == []
        engine.generate(prompt, greedy(SEQ_LEN - len(prompt)))  # exactly full is fine
    finally:
        handle.remove()


def test_fit_messages_drops_oldest_turns_and_keeps_system(tiny_tokenizer):
    system = {"role": "system", "content": "You answer about rivers."}
    messages = [system]
    for i in range(4):
        messages.append({"role": "user", "content": f"Question {i}: the river and the stone window?"})
        messages.append({"role": "assistant", "content": f"Answer {i}: the mountain light is seven."})
    messages.append({"role": "user", "content": "Last question about the garden?"})
    full = len(prompt_ids(tiny_tokenizer, messages))
    max_new = 10
    assert fit_messages(tiny_tokenizer, messages, full + max_new, max_new) == messages  # fits: unchanged

    fitted = fit_messages(tiny_tokenizer, messages, full + max_new - 1, max_new)
    assert fitted[0] == system and fitted[-1] == messages[-1]
    assert fitted[1]["role"] == "user"  # whole turns go, the history still starts with a user
    assert fitted[1:] == messages[len(messages) - len(fitted) + 1 :]  # the latest turns, in order
    assert len(fitted) < len(messages)
    assert len(prompt_ids(tiny_tokenizer, fitted)) <= full - 1

    alone = len(prompt_ids(tiny_tokenizer, [system, messages[-1]]))
    assert fit_messages(tiny_tokenizer, messages, alone + max_new, max_new) == [system, messages[-1]]
    with pytest.raises(ValueError, match="last message"):
        fit_messages(tiny_tokenizer, messages, alone + max_new - 1, max_new)
    with pytest.raises(ValueError, match="no room"):
        fit_messages(tiny_tokenizer, messages, 10, 10)


# -- tracing and streaming -----------------------------------------------------------------------


def test_trace_records(model, tiny_tokenizer, prompt):
    params = greedy(6, trace=True, top_alternatives=4, trace_layer=-1)
    rows = {}
    for use_cache in (True, False):
        engine = Engine(model, tiny_tokenizer, "cpu", FP32, use_kv_cache=use_cache)
        steps = list(engine.stream(prompt, params))
        for i, step in enumerate(steps):
            assert step.cache_len == len(prompt) + i
            assert step.step_ms > 0
            assert len(step.top_ids) == len(step.top_logprobs) == 4
            assert step.top_ids[0] == step.token_id  # greedy picks the top alternative
            assert step.logprob == pytest.approx(step.top_logprobs[0])
            assert step.top_logprobs == sorted(step.top_logprobs, reverse=True)
            assert len(step.attention) == step.cache_len
            assert math.fsum(step.attention) == pytest.approx(1.0, abs=1e-5)
            assert min(step.attention) >= 0
        rows[use_cache] = [s.attention for s in steps]
    for cached, full in zip(rows[True], rows[False]):
        assert cached == pytest.approx(full, abs=1e-5)  # the cache holds the same keys a full pass computes


def test_untraced_steps_carry_no_trace_and_leave_no_hook(engine, model, prompt):
    steps = list(engine.stream(prompt, greedy(3)))
    assert all(s.logprob is None and s.attention is None and s.top_ids is None for s in steps)
    list(engine.stream(prompt, greedy(3, trace=True, trace_layer=0)))
    assert not model.blocks[0].attn._forward_hooks


def test_streamed_text_concatenates_to_decode(engine, tiny_tokenizer, prompt):
    # High temperature over a random model: plenty of byte-fallback ids, including broken sequences.
    params = no_eot(tiny_tokenizer, 50, temperature=5.0, top_k=0, top_p=1.0, seed=0)
    steps = list(engine.stream(prompt, params))
    ids = [s.token_id for s in steps]
    assert "".join(s.text for s in steps) == tiny_tokenizer.decode(ids)
    assert any(tiny_tokenizer.is_byte(i) for i in ids)


def test_text_stream_never_splits_a_character(tiny_tokenizer):
    text = "héllo 日本 x€"
    stream = TextStream(tiny_tokenizer)
    pieces = [stream.push(i) for i in tiny_tokenizer.encode(text)]
    assert "".join(pieces) + stream.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    assert "日" in pieces and "本" in pieces  # released whole once their third byte arrives


def test_sampling_survives_extreme_parameters():
    """A temperature or top_p that rounds to 0, or a penalty that overflows a logit, still picks a token (the top one)."""
    from ngpt.sampling import apply_repetition_penalty, sample_next

    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    for params in (SamplingParams(temperature=1e-45), SamplingParams(temperature=1.0, top_p=1e-50, top_k=0)):
        assert sample_next(logits, params, gen) == 1
    seen = torch.tensor([False, True, False, False])
    penalised = apply_repetition_penalty(logits, seen, 1e-50)  # 3.0 / 1e-50 overflows to inf
    assert sample_next(penalised, SamplingParams(temperature=0.7), gen) == 1
