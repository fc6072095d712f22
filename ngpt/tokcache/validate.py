"""Check that the caches the configured mixes need exist, are complete, and match the tokenizer.

    rows = validate(settings, tok, phase="all", deep=False)     # ngpt cache validate [--deep]
    assert all(r.ok for r in rows)

Missing caches are one FileNotFoundError listing every missing path and the build command.
Everything else becomes a row per source/split whose status is "ok" or says what is wrong:
a shard whose size differs from meta.json (truncated), another tokenizer, ids ≥ vocab (a sample
of each shard; every token with `deep`, which also re-hashes every file), SFT offsets that are
not increasing / out of range, masks not aligned with tokens, an example with no trained token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ngpt.settings import Settings
from ngpt.sources.base import SPLITS
from ngpt.tokcache.layout import META_NAME, Phase, dtype_for_vocab, needed_caches, read_meta, shard_name, source_dir
from ngpt.io_utils import file_sha256
from ngpt.tokenizer import Tokenizer

SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_TOKENS = 4096


@dataclass
class CacheRow:
    source: str
    phase: str
    split: str
    tokens: int
    examples: int
    shards: int
    mb: float
    status: str  # "ok" or what is wrong

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def missing_caches(settings: Settings, caches: Iterable[tuple[Phase, str]]) -> list[tuple[str, list[Path]]]:
    """(source, missing paths) for each cache without meta.json."""
    out = []
    for phase, name in caches:
        d = source_dir(settings.data.cache_dir, phase, name)
        if (d / META_NAME).is_file():
            continue
        paths = [d / META_NAME] + [d / split for split in SPLITS if not (d / split).is_dir()]
        out.append((name, paths))
    return out


def validate(
    settings: Settings,
    tok: Tokenizer,
    phase: Literal["pretrain", "sft", "all"] = "all",
    deep: bool = False,
    caches: list[tuple[Phase, str]] | None = None,
) -> list[CacheRow]:
    """Rows for every split of every needed cache (`caches` defaults to what the mixes need)."""
    caches = needed_caches(settings, phase) if caches is None else caches
    missing = missing_caches(settings, caches)
    if missing:
        lines = [f"  {p}{'/' if p.name in SPLITS else ''}" for _, paths in missing for p in paths]
        builds = ", ".join(f"`ngpt cache build {name}`" for name, _ in missing)
        raise FileNotFoundError(
            f"{len(missing)} of {len(caches)} token caches needed by the configured mixes are missing:\n"
            + "\n".join(lines)
            + f"\nBuild them with `ngpt cache build-all` (same --config), or one by one: {builds}."
        )
    rows = []
    for ph, name in caches:
        rows.extend(_check_cache(source_dir(settings.data.cache_dir, ph, name), ph, name, tok, deep))
    return rows


def _check_cache(src_dir: Path, phase: Phase, name: str, tok: Tokenizer, deep: bool) -> list[CacheRow]:
    try:
        meta = read_meta(src_dir, tok.sha256)
        problems = []
        if meta["vocab_size"] != tok.vocab_size:
            problems.append(f"vocab size {meta['vocab_size']} ≠ tokenizer's {tok.vocab_size}")
        if meta["dtype"] != dtype_for_vocab(tok.vocab_size).name:
            problems.append(f"dtype {meta['dtype']} does not fit vocab {tok.vocab_size}")
        if meta["phase"] != phase or meta["source"] != name:
            problems.append(f"meta.json describes {meta['phase']}/{meta['source']}, not {phase}/{name}")
    except (ValueError, KeyError) as e:
        return [CacheRow(name, phase, split, 0, 0, 0, 0.0, f"{type(e).__name__}: {e}") for split in SPLITS]
    rows = []
    for split in SPLITS:
        info = meta["splits"].get(split)
        if info is None:
            rows.append(CacheRow(name, phase, split, 0, 0, 0, 0.0, f"meta.json has no '{split}' split"))
            continue
        split_problems = problems + _check_split(src_dir / split, meta, info, tok.vocab_size, deep)
        nbytes = sum(f["bytes"] for shard in info["shards"] for f in shard["files"].values())
        status = "ok" if not split_problems else "; ".join(split_problems)
        rows.append(
            CacheRow(name, phase, split, info["num_tokens"], info["num_examples"], len(info["shards"]), nbytes / 1e6, status)
        )
    return rows


def _check_split(split_dir: Path, meta: dict, info: dict, vocab: int, deep: bool) -> list[str]:
    problems: list[str] = []
    rebuild = f"rebuild with `ngpt cache build {meta['source']}`"
    if not info["shards"] or info["num_tokens"] == 0:
        return [f"{split_dir} is empty; {rebuild}"]
    if sum(s["tokens"] for s in info["shards"]) != info["num_tokens"]:
        problems.append(f"shard token counts do not add up to num_tokens={info['num_tokens']}")
    for index, shard in enumerate(info["shards"]):
        for fname, f in shard["files"].items():
            path = split_dir / fname
            actual = path.stat().st_size if path.is_file() else None
            if actual != f["bytes"]:
                have = "missing" if actual is None else f"{actual:,} bytes"
                problems.append(f"{path}: expected {f['bytes']:,} bytes, found {have} (truncated or damaged; {rebuild})")
            elif deep and file_sha256(path) != f["sha256"]:
                problems.append(f"{path}: sha256 differs from meta.json (corrupted; {rebuild})")
        if problems:
            continue
        tokens = np.memmap(split_dir / shard_name("shard", index), dtype=np.dtype(meta["dtype"]), mode="r")
        if len(tokens) != shard["tokens"]:
            problems.append(f"{split_dir / shard_name('shard', index)}: {len(tokens)} tokens, meta.json says {shard['tokens']}")
            continue
        top = max(int(block.max()) for block in _blocks(tokens, deep))
        if top >= vocab:
            problems.append(f"{split_dir / shard_name('shard', index)}: id {top} ≥ vocab size {vocab}; {rebuild}")
        if meta["phase"] == "sft":
            problems.extend(_check_sft_shard(split_dir, index, shard))
    if meta["phase"] == "sft" and not problems and sum(s["examples"] for s in info["shards"]) != info["num_examples"]:
        problems.append(f"shard example counts do not add up to num_examples={info['num_examples']}")
    return problems


def _check_sft_shard(split_dir: Path, index: int, shard: dict) -> list[str]:
    offsets_path = split_dir / shard_name("offsets", index)
    offsets = np.fromfile(offsets_path, dtype=np.int64)
    n = shard["tokens"]
    if len(offsets) != shard["examples"] + 1 or offsets[0] != 0 or offsets[-1] != n:
        return [f"{offsets_path}: offsets must run from 0 to {n} with {shard['examples'] + 1} entries"]
    if np.any(np.diff(offsets) < 2):
        return [f"{offsets_path}: offsets are not increasing by ≥ 2 tokens per example"]
    mask = np.fromfile(split_dir / shard_name("mask", index), dtype=np.uint8)
    if len(mask) != n or mask.max() > 1:
        return [f"{split_dir / shard_name('mask', index)}: mask must hold one 0/1 byte per token ({n})"]
    trained = np.add.reduceat(mask.astype(np.int64), offsets[:-1])
    if np.any(trained == 0):
        first = int(np.flatnonzero(trained == 0)[0])
        return [f"{split_dir / shard_name('mask', index)}: example {first} of this shard has no trained token"]
    return []


def _blocks(tokens: np.ndarray, every: bool):
    """Every token (deep) or SAMPLE_BLOCKS evenly spaced contiguous blocks (cheap: few pages per shard)."""
    step = SAMPLE_BLOCK_TOKENS * 256 if every else SAMPLE_BLOCK_TOKENS
    if every or len(tokens) <= SAMPLE_BLOCKS * SAMPLE_BLOCK_TOKENS:
        for a in range(0, len(tokens), step):
            yield tokens[a : a + step]
        return
    for a in np.linspace(0, len(tokens) - SAMPLE_BLOCK_TOKENS, SAMPLE_BLOCKS).astype(np.int64):
        yield tokens[a : a + SAMPLE_BLOCK_TOKENS]

