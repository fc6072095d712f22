"""Log-likelihood of continuations, batched: what every multiple-choice and completion task is scored by.

    scores = score_requests(model, requests, batch_size=16)     # [Score(logprob, greedy), ...] in order

logprob = Σ log P(continuation token | everything before it); greedy = every continuation token is the
argmax — lm-eval's (loglikelihood, is_greedy), the same numbers up to float rounding.

How: a question's choices share their context, so it runs once. Contexts of the same token length
run in batches through a KV cache that keeps each layer's keys/values (_PrefixCache), with the head
only at their last position (it predicts each continuation's first token); then the continuations
of all those contexts (up to KV_BUDGET_BYTES of them), sorted by length, run as padded batches over
the cached contexts (RoPE positions continue after the
context, and the model's causal mask over a cache does the rest; right padding is harmless, since a
position attends only to what comes before it). The head runs only where a token is scored.

Too long for the model (context + continuation > seq_len + 1), lm-eval scores the row
(context + continuation)[-(seq_len + 1):][:-1], cut from the left. That is the same as scoring the
continuation after the context's last seq_len + 1 - len(continuation) tokens, so such a request
becomes one with that shorter context and joins the same path (choices whose cut contexts agree
share them too). A continuation longer than the whole window (lm-eval fails on one) is scored on
its last seq_len tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ngpt.eval.prompts import Request
from ngpt.model import GPT
from ngpt.settings import SPECIAL_TOKENS


KV_BUDGET_BYTES = 256 << 20  # fp32 keys/values of the contexts whose continuations are batched together


@dataclass(frozen=True)
class Score:
    logprob: float
    greedy: bool


class _PrefixCache:
    """The model's KV-cache seam (ngpt.model.KVCache) for shared contexts.

    Recording (rows None): keeps each layer's post-RoPE k/v of each batch of contexts and returns them
    unchanged (plain causal attention over the contexts). Replaying (rows = the context of each
    continuation row): returns that context's stored k/v followed by the continuation's own.
    """

    def __init__(self) -> None:
        self.parts: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        self.rows: Tensor | None = None

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.rows is None:
            self.parts.setdefault(layer_idx, []).append((k, v))
            return k, v
        past_k = self.k[layer_idx].index_select(0, self.rows)
        past_v = self.v[layer_idx].index_select(0, self.rows)
        return torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)

    def replay(self, rows: Tensor) -> None:
        """From now on, return the recorded contexts `rows` (indices over every recorded batch, in order)."""
        if self.parts:
            for layer, parts in self.parts.items():
                self.k[layer] = torch.cat([k for k, _ in parts]) if len(parts) > 1 else parts[0][0]
                self.v[layer] = torch.cat([v for _, v in parts]) if len(parts) > 1 else parts[0][1]
            self.parts = {}
        self.rows = rows


def _token_scores(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(M, V) logits at the scored positions, (M,) targets → log-probs (M,) and whether each target is the argmax."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    return logprobs, logits.argmax(dim=-1) == targets


def score_requests(model: GPT, requests: list[Request], batch_size: int = 16,
                   on_done: Callable[[int], None] | None = None) -> list[Score]:
    """Score every request (see the module docstring); on_done(n) after each n requests finish."""
    T = model.cfg.seq_len
    device = next(model.parameters()).device
    out: list[Score | None] = [None] * len(requests)
    conts: dict[int, tuple[int, ...]] = {}  # the continuation each request scores
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        if not r.context:
            raise ValueError(f"request {i} has an empty context; lm-eval scores an empty context after {SPECIAL_TOKENS[-1]}")
        if not r.continuation:  # nothing to score: log 1 = 0, and trivially all greedy (as lm-eval)
            out[i] = Score(0.0, True)
            continue
        ctx, cont = r.context, r.continuation
        if len(ctx) + len(cont) > T + 1:  # lm-eval's left cut, as a shorter context (module docstring)
            window = (ctx + cont)[-(T + 1):]
            n = min(len(cont), T)
            ctx, cont = window[: T + 1 - n], window[T + 1 - n :]
        conts[i] = cont
        by_context.setdefault(ctx, []).append(i)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        by_length: dict[int, list[tuple[int, ...]]] = {}
        for ctx in by_context:
            by_length.setdefault(len(ctx), []).append(ctx)
        # How many contexts share one recorded cache: as many as fit KV_BUDGET_BYTES, so a length's
        # continuations can be sorted by length across all of them (little padding), in bounded memory.
        per_token = model.cfg.n_layer * 2 * model.cfg.n_embd * 4
        for length in sorted(by_length):
            contexts = by_length[length]
            step = max(batch_size, KV_BUDGET_BYTES // (per_token * length))
            for start in range(0, len(contexts), step):
                chunk = contexts[start : start + step]
                _score_shared(model, conts, chunk, [by_context[c] for c in chunk], batch_size, device, out,
                              on_done or (lambda n: None))
    model.train(was_training)
    return out  # type: ignore[return-value]


def _score_shared(model: GPT, conts: dict[int, tuple[int, ...]], contexts: list[tuple[int, ...]],
                  members: list[list[int]], batch_size: int, device: torch.device, out: list,
                  on_done: Callable[[int], None]) -> None:
    """Contexts of one length once (batch_size at a time), then all their continuations, sorted, in padded batches."""
    cache = _PrefixCache()
    totals: dict[int, tuple[float, bool]] = {}
    for start in range(0, len(contexts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(contexts))))
        ctx = torch.tensor([contexts[g] for g in chunk], dtype=torch.long, device=device)
        last, _ = model(ctx, kv_cache=cache, logits="last")  # the last context position predicts each first token
        first = [(g, i) for g in chunk for i in members[g]]
        lp0, greedy0 = _token_scores(last[[g - start for g, _ in first], 0],
                                     torch.tensor([conts[i][0] for _, i in first], device=device))
        totals.update({i: (lp, ok) for (_, i), lp, ok in zip(first, lp0.tolist(), greedy0.tolist())})
        on_done(sum(len(conts[i]) == 1 for _, i in first))
    # Continuations of 2+ tokens: their own tokens but the last are the inputs that predict the rest.
    rest = sorted(((g, i) for g, group in enumerate(members) for i in group if len(conts[i]) > 1),
                  key=lambda gi: len(conts[gi[1]]))
    for start in range(0, len(rest), batch_size):
        rows = rest[start : start + batch_size]
        width = max(len(conts[i]) for _, i in rows) - 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        pos_r, pos_t, targets = [], [], []
        for r, (_, i) in enumerate(rows):
            cont = conts[i]
            x[r, : len(cont) - 1] = torch.tensor(cont[:-1])
            pos_r += [r] * (len(cont) - 1)
            pos_t += range(len(cont) - 1)
            targets += cont[1:]
        cache.replay(torch.tensor([g for g, _ in rows], device=device))
        logits, _ = model(x.to(device), start_pos=len(contexts[0]), kv_cache=cache)
        lp, ok = _token_scores(logits[pos_r, pos_t], torch.tensor(targets, device=device))
        index = torch.tensor(pos_r, device=device)
        sums = torch.zeros(len(rows), device=device).index_add_(0, index, lp).tolist()
        misses = torch.zeros(len(rows), dtype=torch.long, device=device).index_add_(0, index, (~ok).long()).tolist()
        for r, (_, i) in enumerate(rows):
            lp_first, ok_first = totals[i]
            totals[i] = (lp_first + sums[r], ok_first and misses[r] == 0)
        on_done(len(rows))
    for i, (lp, ok) in totals.items():
        out[i] = Score(lp, ok)
