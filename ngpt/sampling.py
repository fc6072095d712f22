"""How the next token is chosen: the sampling parameters and the logits processors, in Hugging Face's order.

    from ngpt.sampling import SamplingParams, sample_next
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.95, seed=1)
    token = sample_next(logits, params, generator)       # logits (V,) fp32, after penalties and bans

Order: repetition penalty, banned ids (the engine applies both), temperature, top-k, top-p; then a
draw on the CPU with a seeded `torch.Generator`, so a seed gives the same tokens on CPU, CUDA and MPS.
Each processor takes and returns fp32 logits (V,) or (B, V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ngpt.settings import GenerationSettings

_DEFAULTS = GenerationSettings()  # settings.py owns the defaults; SamplingParams only mirrors them


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each next token, and what to report per step."""

    max_new_tokens: int = _DEFAULTS.max_new_tokens
    temperature: float = _DEFAULTS.temperature  # 0 = greedy (argmax)
    top_k: int = _DEFAULTS.top_k  # keep the k most likely tokens; 0 = off
    top_p: float = _DEFAULTS.top_p  # keep the smallest set holding this much probability; 1 = off
    repetition_penalty: float = _DEFAULTS.repetition_penalty  # >1 discourages tokens already seen; 1 = off
    banned_ids: tuple[int, ...] = ()  # never generated (e.g. eot, to force max_new_tokens in a benchmark)
    seed: int | None = _DEFAULTS.seed  # None = a fresh random seed (generate() reports which)
    trace: bool = False  # per step: chosen token's logprob and the top alternatives
    top_alternatives: int = 5
    trace_layer: int | None = None  # with trace: this layer's attention row (mean over heads); -1 = last

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens > 0, f"max_new_tokens must be > 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1] (1 = off), got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"),
            (self.top_alternatives >= 0, f"top_alternatives must be >= 0, got {self.top_alternatives}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def greedy(cls, max_new_tokens: int, **fields) -> SamplingParams:
        """Argmax at every step, nothing reweighted: what evaluations and parity checks compare."""
        return cls(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, **fields)

    @classmethod
    def from_settings(cls, gen: GenerationSettings, **overrides) -> SamplingParams:
        """The `generation` section of the settings, plus per-call fields (banned_ids, trace, ...)."""
        return cls(**{**gen.model_dump(), **overrides})


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al. 2019) on tokens already seen (`seen`: bool mask like logits).

    A positive logit is divided by the penalty and a negative one multiplied, so with penalty > 1 a
    seen token always becomes less likely, whichever side of zero its logit is on.
    """
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Only the k largest logits stay finite (ties with the k-th stay too); k = 0 or >= V is off."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most likely tokens until their probability reaches p (always the top one)."""
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token goes when the tokens ranked above it already hold p; the top token has 0 above it.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop_sorted[..., 0] = False  # even when p rounds to 0 in fp32
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next id from processed logits (V,): argmax at temperature 0, else a draw on the CPU."""
    if params.temperature == 0:
        return int(logits.argmax())
    # An extreme penalty can overflow a logit to inf; the top one minus the max is 0, so a tiny temperature
    # (1e-45) gives -inf for the others and 0 for the top instead of inf/inf = nan.
    logits = logits.nan_to_num(nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    logits = (logits - logits.max()) / params.temperature
    logits = top_p_filter(top_k_filter(logits, params.top_k), params.top_p)
    # On the CPU with a CPU generator: the same seed and probabilities give the same draw on any device.
    probs = logits.softmax(dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))
