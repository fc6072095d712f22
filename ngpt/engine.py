"""Generation: a preallocated KV cache, prefill/decode, and streaming one token at a time.

    from ngpt.engine import Engine
    from ngpt.sampling import SamplingParams
    engine = Engine(model, tok, device, precision)          # precision: the autocast (ngpt.device), or NO_AUTOCAST
    for step in engine.stream(prompt_ids(tok, messages), SamplingParams(temperature=0.8, seed=1)):
        print(step.text, end="", flush=True)
    result = engine.generate(ids, SamplingParams(temperature=0))   # greedy; result.ids ends with eot if hit

How a step works: the prompt goes through the model once (`prefill`), filling a KV cache allocated
once for the whole generation; each later step feeds only the newest token (`decode_step`). With
`use_kv_cache=False` every step recomputes the whole sequence instead (the `--no-kv-cache` flag and
the benchmark's baseline). The next token is chosen by ngpt.sampling; text comes out through the
tokenizer's incremental decoder (TextStream). Loading a checkpoint for generation, with its weights
prepared for the device: ngpt.inference.load_engine.

The model runs under `torch.inference_mode()` and the resolved autocast, entered around each step and
never held across a `yield`: the caller's code between tokens runs in its own mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ngpt.device import NO_AUTOCAST, Precision
from ngpt.model import GPT, apply_rope
from ngpt.sampling import SamplingParams, apply_repetition_penalty, sample_next
from ngpt.tokenizer import TextStream, Tokenizer


@dataclass
class Step:
    """One generated token and what the engine saw while choosing it."""

    index: int  # 0 = the first generated token
    token_id: int
    text: str  # new text that decodes cleanly now ('' while a multi-byte character is incomplete)
    cache_len: int  # tokens the model attended over for this choice (prompt + earlier generated)
    step_ms: float  # forward + sampling (the first step includes the prefill)
    finish_reason: str | None  # "eot" or "length" on the last step, else None
    # With trace=True, from the model's own distribution (raw logits, before penalties/temperature):
    logprob: float | None = None
    top_ids: list[int] | None = None
    top_logprobs: list[float] | None = None
    attention: list[float] | None = None  # trace_layer's weights over the cache_len positions; sums to 1


@dataclass
class GenerationResult:
    ids: list[int]  # generated ids; the last is eot when the model stopped itself (callers strip it)
    text: str  # decode(ids): eot has no text
    finish_reason: str  # "eot" or "length"
    prompt_tokens: int
    seed: int | None  # the sampling seed used (None for greedy)
    steps: list[Step] = field(default_factory=list)

    @property
    def prefill_ms(self) -> float:
        return self.steps[0].step_ms

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second after the first (which pays for the prefill); 0 when only one was made."""
        ms = sum(s.step_ms for s in self.steps[1:])
        return (len(self.steps) - 1) / (ms / 1000) if ms > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# The KV cache.


class KVCache:
    """Post-RoPE keys and values of every layer, in two tensors allocated once, plus a length.

    Storage is (n_layer, B, n_head, max_len, head_dim); layer i's slice is (B, H, max_len, D). It is
    allocated on the first update, with the dtype and device of the keys the model produces (fp32,
    or bf16/fp16 under autocast), and never grows: generation knows its maximum length up front.
    `update` writes the new positions in place and returns views up to the new length, so attention
    reads the cache without a copy. The length advances when the last layer has written: every layer
    of one forward writes at the same positions.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int) -> None:
        self.shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.n_layer, self.max_len = n_layer, max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @classmethod
    def for_model(cls, model: GPT, max_len: int, batch_size: int = 1) -> KVCache:
        cfg = model.cfg
        return cls(cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing {start}..{end - 1} overflows it")
        if self.k is None:
            self.k = torch.empty(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(self.shape, dtype=v.dtype, device=v.device)
        self.k[layer_idx, :, :, start:end] = k
        self.v[layer_idx, :, :, start:end] = v
        if layer_idx == self.n_layer - 1:
            self.length = end
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]


def attention_row(attn, x: Tensor, cos: Tensor, sin: Tensor, keys: Tensor | None) -> Tensor:
    """Attention weights of x's last position over all keys, averaged over heads: (S,) fp32.

    Recomputed from the layer's input, because the fused attention kernel never materialises the
    weights. `keys` are the layer's cached post-RoPE keys; None when x is the whole sequence.
    """
    q = apply_rope(attn.project(x[:, -1:])[0], cos[-1:], sin[-1:])
    if keys is None:
        keys = apply_rope(attn.project(x)[1], cos, sin)
    scores = q.float() @ keys.float().transpose(-2, -1) / math.sqrt(attn.head_dim)  # (B, H, 1, S)
    return scores.softmax(dim=-1).mean(dim=1)[0, 0]


# ---------------------------------------------------------------------------------------------
# The engine.


class Engine:
    """Runs one model for generation: prefill, decode steps, sampling, streaming."""

    def __init__(
        self,
        model: GPT,
        tok: Tokenizer,
        device: torch.device | str | None = None,
        precision: Precision = NO_AUTOCAST,
        *,
        use_kv_cache: bool = True,
    ) -> None:
        """device None = where the model already is. precision: an autocast to decode under (ngpt.device);
        none by default, since decoding's precision is its weights' (inference.prepare_for_decoding), and the
        training autocast's measurement says nothing about one-token steps."""
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.tok = tok
        self.precision = precision
        self.use_kv_cache = use_kv_cache
        self.vocab_size = model.cfg.vocab_size
        if tok.vocab_size > self.vocab_size:
            raise ValueError(
                f"tokenizer {tok.path} has {tok.vocab_size} ids but the model only {self.vocab_size}; "
                "load the tokenizer the model was trained with (its sha256 is in the checkpoint)"
            )

    @contextmanager
    def _run_mode(self) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.precision.enabled:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.precision.dtype))
            yield

    # -- the two forward passes ---------------------------------------------------------------

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        return KVCache.for_model(self.model, max_len, batch_size)

    def prefill(self, ids: Tensor, cache: KVCache) -> Tensor:
        """Run ids (B, T) through the model after what `cache` holds; fp32 logits of the last position (B, V)."""
        with self._run_mode():
            logits, _ = self.model(ids.to(self.device), start_pos=cache.length, kv_cache=cache, logits="last")
            return logits[:, -1].float()

    def decode_step(self, token_ids: Tensor, cache: KVCache) -> Tensor:
        """Append one token per sequence (B,) to the cache; fp32 logits of the next position (B, V)."""
        return self.prefill(token_ids.view(-1, 1), cache)

    def _full_forward(self, ids: list[int]) -> Tensor:
        """Without a cache: the whole sequence again; fp32 logits of its last position (V,)."""
        with self._run_mode():
            logits, _ = self.model(torch.tensor([ids], device=self.device), logits="last")
            return logits[0, -1].float()

    # -- generation ---------------------------------------------------------------------------

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        """Everything that can be wrong with a request, raised before any work is done."""
        P, N, S, V = len(prompt), params.max_new_tokens, self.model.cfg.seq_len, self.vocab_size
        if P == 0:
            raise ValueError("the prompt is empty; generation continues a prompt of at least one token")
        bad = [i for i in prompt if not 0 <= i < V]
        if bad:
            raise ValueError(f"prompt holds ids outside the vocabulary 0..{V - 1}: {bad[:5]}")
        if P + N > S:
            room = f"lower max_new_tokens to {S - P} or less, or shorten" if P < S else "shorten"
            raise ValueError(
                f"prompt ({P} tokens) + max_new_tokens ({N}) = {P + N} exceeds the model context "
                f"seq_len={S}; {room} the prompt (chat drops the oldest turns: chat_format.fit_messages)"
            )
        bad = [i for i in params.banned_ids if not 0 <= i < V]
        if bad:
            raise ValueError(f"banned_ids outside the vocabulary 0..{V - 1}: {bad[:5]}")
        if len(set(params.banned_ids) | set(range(self.tok.vocab_size, V))) >= V:
            raise ValueError("banned_ids ban every token; nothing could be generated")
        L = self.model.cfg.n_layer
        if params.trace_layer is not None and not -L <= params.trace_layer < L:
            raise ValueError(f"trace_layer={params.trace_layer} but the model has layers 0..{L - 1} (-1 = last)")

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[Step]:
        """Yield one Step per generated token; the last has finish_reason set.

        Checks the request now (a ValueError here, before any forward), then generates lazily.
        """
        params = params or SamplingParams()
        self.check(list(prompt), params)
        return self._stream(list(prompt), params)

    def generate(
        self, prompt: list[int], params: SamplingParams | None = None, on_step: Callable[[Step], None] | None = None
    ) -> GenerationResult:
        """Run stream() to the end; `on_step` sees each Step as it is made."""
        params = params or SamplingParams()
        if params.temperature > 0 and params.seed is None:
            params = replace(params, seed=torch.Generator().seed())  # fixed now, so it can be reported
        steps = []
        for step in self.stream(prompt, params):
            steps.append(step)
            if on_step is not None:
                on_step(step)
        ids = [s.token_id for s in steps]
        seed = params.seed if params.temperature > 0 else None
        return GenerationResult(ids, "".join(s.text for s in steps), steps[-1].finish_reason, len(prompt), seed, steps)

    def _stream(self, prompt: list[int], params: SamplingParams) -> Iterator[Step]:
        P, N = len(prompt), params.max_new_tokens
        ids = list(prompt)
        generator = torch.Generator()  # CPU on purpose: see sample_next
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        text = TextStream(self.tok)
        with self._run_mode():  # made as inference tensors, so the steps may update them in place
            cache = self.new_cache(P + N) if self.use_kv_cache else None
            # Ids past the tokenizer's vocabulary (a model vocab padded for speed) have no text: banned too.
            banned_ids = sorted(set(params.banned_ids) | set(range(self.tok.vocab_size, self.vocab_size)))
            banned = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            banned[banned_ids] = True
            seen = None
            if params.repetition_penalty != 1:
                seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
                seen[prompt] = True

        for index in range(N):
            t0 = time.perf_counter()
            n_ctx = len(ids)  # what the model attends over to choose this token
            with self._run_mode(), self._attention_probe(params, cache, n_ctx) as probe:
                if cache is None:
                    raw = self._full_forward(ids)
                elif index == 0:
                    raw = self.prefill(torch.tensor([prompt], device=self.device), cache)[0]
                else:
                    raw = self.decode_step(torch.tensor([ids[-1]], device=self.device), cache)[0]
                logits = raw
                if seen is not None:
                    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
                if banned_ids:
                    logits = logits.masked_fill(banned, float("-inf"))
                token = sample_next(logits, params, generator)
                if seen is not None:
                    seen[token] = True
                trace = self._trace(raw, token, params, probe) if params.trace else {}
            step_ms = (time.perf_counter() - t0) * 1000
            ids.append(token)
            finish = "eot" if token == self.tok.eot_id else "length" if index == N - 1 else None
            piece = text.push(token) + (text.flush() if finish else "")
            yield Step(index, token, piece, n_ctx, step_ms, finish, **trace)
            if finish:
                return

    @contextmanager
    def _attention_probe(self, params: SamplingParams, cache: KVCache | None, n_ctx: int) -> Iterator[dict]:
        """While tracing a layer: a forward hook on its attention that stores the new token's row.

        The hook exists only for the traced step, so the normal path runs exactly as without tracing.
        """
        probe: dict[str, Tensor] = {}
        if not params.trace or params.trace_layer is None:
            yield probe
            return
        attn = self.model.blocks[params.trace_layer].attn

        def hook(module, args, output) -> None:
            x, cos, sin = args[:3]
            # With a cache, this layer's keys for all n_ctx positions are already written there.
            keys = None if cache is None else cache.k[module.layer_idx, :, :, :n_ctx]
            probe["attention"] = attention_row(module, x, cos, sin, keys)

        handle = attn.register_forward_hook(hook)
        try:
            yield probe
        finally:
            handle.remove()

    def _trace(self, raw: Tensor, token: int, params: SamplingParams, probe: dict[str, Tensor]) -> dict:
        logprobs = raw.log_softmax(dim=-1)
        top = logprobs.topk(min(params.top_alternatives, logprobs.numel()))
        out = {
            "logprob": float(logprobs[token]),
            "top_ids": top.indices.tolist(),
            "top_logprobs": top.values.tolist(),
        }
        if "attention" in probe:
            out["attention"] = probe["attention"].tolist()
        return out


