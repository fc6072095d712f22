"""Read token caches with memmap: random pretrain windows, and SFT examples with their labels.

    cache = PretrainReader.open(settings.data.cache_dir, "wikitext", "train", tok)
    xy = cache.sample(np.random.default_rng(0), batch_size=8, T=512)    # (8, 513) int64
    sft = SFTReader.open(settings.data.cache_dir, "oasst1", "val", tok)
    ids, labels = sft.example(0)                                        # labels -100 where untrained

Opening checks that meta.json exists and that the cache was built with `tok` (same sha256), so a
model never trains on ids from another vocabulary. Nothing is read until a window is sampled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ngpt.settings import IGNORE_INDEX
from ngpt.tokcache.layout import Phase, read_meta, shard_name, source_dir
from ngpt.tokenizer import Tokenizer


class _SplitReader:
    phase: Phase

    def __init__(self, src_dir: Path, split: str, tokenizer: Tokenizer | str):
        sha = tokenizer if isinstance(tokenizer, str) else tokenizer.sha256
        self.dir = src_dir / split
        self.meta = read_meta(src_dir, sha)
        if self.meta["phase"] != self.phase:
            raise ValueError(f"Cache {src_dir} is a {self.meta['phase']} cache, not {self.phase}.")
        if split not in self.meta["splits"]:
            raise ValueError(f"Cache {src_dir} has no split '{split}' (it has {', '.join(self.meta['splits'])}).")
        self.source = self.meta["source"]
        self.split = split
        self.dtype = np.dtype(self.meta["dtype"])
        self.shards = self.meta["splits"][split]["shards"]
        self.num_tokens: int = self.meta["splits"][split]["num_tokens"]
        self.num_shards = len(self.shards)
        self.tokens = [self._memmap("shard", i, self.dtype) for i in range(self.num_shards)]

    @classmethod
    def open(cls, cache_dir: str | Path, source: str, split: str, tokenizer: Tokenizer | str):
        return cls(source_dir(cache_dir, cls.phase, source), split, tokenizer)

    def _memmap(self, kind: str, index: int, dtype: np.dtype) -> np.memmap:
        path = self.dir / shard_name(kind, index)
        expected = self.shards[index]["files"][path.name]["bytes"]
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            raise ValueError(
                f"Cache file {path} has {actual if actual is not None else 'no'} bytes, meta.json says {expected}; "
                f"the cache is damaged: rebuild with `ngpt cache build {self.source}`."
            )
        return np.memmap(path, dtype=dtype, mode="r")


class PretrainReader(_SplitReader):
    """Windows of T+1 consecutive tokens (inputs + shifted targets), drawn uniformly over all windows."""

    phase = "pretrain"

    @property
    def num_documents(self) -> int:
        return self.meta["splits"][self.split]["num_examples"]

    def sample(self, rng: np.random.Generator, batch_size: int, T: int) -> np.ndarray:
        """(batch_size, T+1) int64; each window lies inside one shard, shards weighted by their windows."""
        starts_per_shard = np.array([max(0, len(t) - T) for t in self.tokens], dtype=np.int64)
        total = int(starts_per_shard.sum())
        if total == 0:
            longest = max(len(t) for t in self.tokens)
            raise ValueError(
                f"Cache {self.source}/{self.split}: no shard holds T+1={T + 1} tokens (longest {longest}); "
                "use a shorter model.seq_len, or rebuild with a larger --shard-bytes / more data."
            )
        shard_ids = rng.choice(self.num_shards, size=batch_size, p=starts_per_shard / total)
        out = np.empty((batch_size, T + 1), dtype=np.int64)
        for row, s in enumerate(shard_ids):
            start = int(rng.integers(0, starts_per_shard[s]))
            out[row] = self.tokens[s][start : start + T + 1]
        return out


class SFTReader(_SplitReader):
    """Whole SFT examples by index: token ids and labels (the id where trained, -100 elsewhere)."""

    phase = "sft"

    def __init__(self, src_dir: Path, split: str, tokenizer: Tokenizer | str):
        super().__init__(src_dir, split, tokenizer)
        self.masks = [self._memmap("mask", i, np.dtype(np.uint8)) for i in range(self.num_shards)]
        self.offsets = [np.array(self._memmap("offsets", i, np.dtype(np.int64))) for i in range(self.num_shards)]
        counts = [len(o) - 1 for o in self.offsets]
        self.first_example = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.num_examples = int(self.first_example[-1])

    def lengths(self) -> np.ndarray:
        """Token count of every example, in index order (for packing / length-aware batching)."""
        return np.concatenate([np.diff(o) for o in self.offsets])

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.num_examples:
            raise IndexError(f"example {i} out of range: {self.source}/{self.split} has {self.num_examples}")
        shard = int(np.searchsorted(self.first_example, i, side="right")) - 1
        j = i - int(self.first_example[shard])
        a, b = int(self.offsets[shard][j]), int(self.offsets[shard][j + 1])
        ids = self.tokens[shard][a:b].astype(np.int64)
        labels = np.where(self.masks[shard][a:b] != 0, ids, IGNORE_INDEX)
        return ids, labels
