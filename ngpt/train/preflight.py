"""Fail fast: everything a training phase needs is checked before step 0, with messages that say the fix.

Checks: the tokenizer exists and fits the model's vocabulary; every cache the mixes and the val
sources reference exists, is whole, and was built with this tokenizer; the caches hold windows of
T+1 tokens and SFT examples fit a row. A problem found here costs seconds, not a night.
"""

from __future__ import annotations

from ngpt.settings import Settings
from ngpt.tokcache.layout import Phase, source_dir
from ngpt.tokcache.validate import validate
from ngpt.tokenizer import Tokenizer


def caches_for_phase(settings: Settings, phase: str) -> tuple[list[tuple[Phase, str]], bool]:
    """The caches a phase reads, and whether val_sft_loss can be computed.

    Pretrain needs its mix + the pretrain val source; it also reports val_sft_loss when the SFT caches
    exist (a nice early signal, not a requirement). SFT needs its mix and the pretrain val source
    (both curves are reported in SFT).
    """
    data = settings.data
    pretrain = [("pretrain", s) for s in dict.fromkeys([*data.mix_pretrain, data.val_pretrain_source])]
    sft = [("sft", s) for s in data.mix_sft]
    if data.val_sft_source == "wikitext":
        sft_val: list[tuple[Phase, str]] = [("pretrain", "wikitext")]
    else:
        sft_val = sft
    if phase == "sft":
        return list(dict.fromkeys([("pretrain", data.val_pretrain_source), *sft, *sft_val])), True
    have_sft_val = all((source_dir(data.cache_dir, p, s) / "meta.json").is_file() for p, s in sft_val)
    return list(dict.fromkeys(pretrain + (sft_val if have_sft_val else []))), have_sft_val


def check_before_training(settings: Settings, phase: str) -> tuple[Tokenizer, bool]:
    """Raise with a clear message if anything is missing; return the tokenizer and whether SFT val is on."""
    tok = Tokenizer.load(settings.tokenizer.model_path)
    if settings.model.vocab_size < tok.vocab_size:
        raise ValueError(
            f"model.vocab_size={settings.model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({tok.vocab_size}, {tok.path}); set model.vocab_size to {tok.vocab_size}."
        )
    caches, sft_val = caches_for_phase(settings, phase)
    bad = [r for r in validate(settings, tok, caches=caches) if not r.ok]
    if bad:
        lines = "\n".join(f"  {r.phase}/{r.source}/{r.split}: {r.status}" for r in bad)
        raise ValueError(f"Token caches failed validation before training:\n{lines}\nRebuild them with `ngpt cache build-all`.")
    if phase == "sft" and settings.data.sft_max_tokens > settings.model.seq_len + 1:
        raise ValueError(
            f"data.sft_max_tokens={settings.data.sft_max_tokens} exceeds model.seq_len+1={settings.model.seq_len + 1}: "
            "SFT examples would not fit a row. Lower data.sft_max_tokens and rebuild the SFT caches, or raise model.seq_len."
        )
    return tok, sft_val
