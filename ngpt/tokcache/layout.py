"""Where caches live and what meta.json says: the one place the on-disk contract is spelled out.

    {cache_dir}/{pretrain|sft}/{source}/meta.json
    {cache_dir}/{pretrain|sft}/{source}/{train,val}/shard_00000.bin   token ids (uint16 / uint32)
                                                  /mask_00000.bin    SFT only: uint8 loss mask, one per token
                                                  /offsets_00000.bin SFT only: int64 example starts + end

meta.json is written last, so a directory without it is not a cache. A source is built in
`.{source}.tmp-<pid>` next to its final directory (ngpt.io_utils.temp_dir_for) and renamed into place
when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from ngpt.settings import PRETRAIN_SOURCES, SFT_SOURCES, Settings

FORMAT_VERSION = 1
META_NAME = "meta.json"
Phase = Literal["pretrain", "sft"]
PHASES: tuple[Phase, ...] = ("pretrain", "sft")


def phase_of(source: str) -> Phase:
    if source in PRETRAIN_SOURCES:
        return "pretrain"
    if source in SFT_SOURCES:
        return "sft"
    raise ValueError(f"Unknown source '{source}'. Valid sources: {', '.join(PRETRAIN_SOURCES + SFT_SOURCES)}")


def source_dir(cache_dir: str | Path, phase: Phase, source: str) -> Path:
    return Path(cache_dir) / phase / source


def shard_name(kind: Literal["shard", "mask", "offsets"], index: int) -> str:
    return f"{kind}_{index:05d}.bin"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a `vocab_size` vocabulary."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"Tokenizer vocab size {vocab_size} does not fit uint32 token ids; use a smaller vocabulary.")


def needed_caches(settings: Settings, phase: Literal["pretrain", "sft", "all"] = "all") -> list[tuple[Phase, str]]:
    """The caches the configured mixes read: mix_pretrain keys + val_pretrain_source; mix_sft keys."""
    data = settings.data
    out: list[tuple[Phase, str]] = []
    if phase in ("pretrain", "all"):
        wanted = set(data.mix_pretrain) | {data.val_pretrain_source}
        out += [("pretrain", s) for s in PRETRAIN_SOURCES if s in wanted]
    if phase in ("sft", "all"):
        out += [("sft", s) for s in SFT_SOURCES if s in data.mix_sft]
    return out


def roam_path(settings: Settings) -> Path:
    """The markdown notes directory for 'roam': data.sources.roam when given, else data.roam_dir."""
    return Path(settings.data.sources.roam or settings.data.roam_dir).expanduser()


def read_meta(src_dir: Path, tokenizer_sha: str | None = None) -> dict:
    """meta.json of one cache; with `tokenizer_sha`, a ValueError when the cache used another tokenizer."""
    meta_path = src_dir / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"Cache {src_dir} does not exist ({meta_path} is missing); build it with `ngpt cache build {src_dir.name}`."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON (line {e.lineno}); rebuild with `ngpt cache build {src_dir.name}`.") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"Cache {src_dir} has format version {meta.get('format_version')}, this ngpt reads {FORMAT_VERSION}; "
            f"rebuild with `ngpt cache build {meta.get('source', src_dir.name)}`."
        )
    if tokenizer_sha is not None and meta["tokenizer_sha256"] != tokenizer_sha:
        raise ValueError(
            f"cache {src_dir} was built with tokenizer {meta['tokenizer_sha256']}, current tokenizer is {tokenizer_sha}; "
            f"rebuild with `ngpt cache build {meta['source']}`"
        )
    return meta
