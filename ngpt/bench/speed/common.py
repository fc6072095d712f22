"""What both speed benchmarks share: the model's dims and the machine in a report, ratios, transformers' config.

    from ngpt.bench.speed.common import machine, transformers_config
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

import torch

from ngpt.device import device_name
from ngpt.export.hf import hf_fields, hf_model_type
from ngpt.settings import ModelSettings, SpeedCompare

if TYPE_CHECKING:
    from ngpt.bench.speed.decode import DecodeTiming
    from ngpt.bench.speed.train import ModelTiming

COMPARE_CHOICES = get_args(SpeedCompare)


def model_dims(cfg: ModelSettings) -> dict:
    """The model's shapes: the first keys of the "config" record of both speed reports."""
    return {
        "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "d_ff": cfg.ffn_dim,
    }


def machine(device: torch.device) -> dict:
    """Where a speed report was measured: the device, its name and torch's CPU threads."""
    return {"device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads()}


def speed_ratio(ours: ModelTiming | DecodeTiming, other: ModelTiming | DecodeTiming | None) -> float | None:
    """Our tokens/s over `other`'s (> 1: ours is faster); None when `other` was not timed."""
    return None if other is None else ours.tokens_per_s / other.tokens_per_s


def transformers_config(cfg: ModelSettings):
    """The transformers config of exactly ngpt's model (Llama, Qwen3 or Arcee: ngpt.export.hf; RuntimeError without transformers)."""
    try:
        from transformers import AutoConfig
    except ImportError as e:
        raise RuntimeError(
            "--compare transformers needs the `transformers` package, which is not importable here "
            f"({e}). Install it (pip install transformers) or drop --compare."
        ) from None
    # use_cache off: training builds no KV cache in forward, as in ngpt
    return AutoConfig.for_model(hf_model_type(cfg), **hf_fields(cfg), use_cache=False, attn_implementation="sdpa")


