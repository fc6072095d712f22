"""Write one split of a token cache as fixed-size shards, streaming (no shard is held in memory).

Pretrain: one token stream (documents joined by <|eot|>), cut into shards of `shard_bytes`;
a document may continue in the next shard. SFT: whole examples only (an example never straddles
shards, so a reader needs no stitching), each shard with a uint8 loss mask aligned token for token
and int64 offsets [0, end_0, end_1, ..., n_tokens]. A shard holds at least one example, so an
example longer than a shard gets a shard of its own.

    w = SplitWriter(tmp / "train", np.dtype(np.uint16), shard_bytes=64 << 20, sft=False, vocab_size=16384)
    w.add_documents(tokens, lengths); split_meta = w.close()

Each file's size and sha256 go into meta.json, so `ngpt cache validate` catches truncation and
`--deep` catches corruption.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ngpt.tokcache.layout import shard_name


class _HashedFile:
    """A file written once, front to back, remembering its size and sha256."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, arr: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(arr)).cast("B")
        self.f.write(data)
        self.sha.update(data)
        self.nbytes += len(data)

    def finish(self) -> dict:
        self.f.flush()
        os.fsync(self.f.fileno())  # the rename into place must not publish data still in flight
        self.f.close()
        return {"bytes": self.nbytes, "sha256": self.sha.hexdigest()}


class SplitWriter:
    def __init__(self, split_dir: Path, dtype: np.dtype, shard_bytes: int, sft: bool, vocab_size: int):
        if vocab_size > np.iinfo(dtype).max + 1:
            raise ValueError(f"Tokenizer vocab size {vocab_size} does not fit {dtype} token ids.")
        self.dir = split_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.capacity = max(1, shard_bytes // dtype.itemsize)  # tokens per shard
        self.sft = sft
        self.shards: list[dict] = []
        self.num_tokens = 0
        self.num_examples = 0
        self._files: dict[str, _HashedFile] = {}
        self._shard_tokens = 0
        self._offsets: list[int] = [0]

    def _open_shard(self) -> None:
        index = len(self.shards)
        kinds = ("shard", "mask") if self.sft else ("shard",)
        self._files = {k: _HashedFile(self.dir / shard_name(k, index)) for k in kinds}
        self._shard_tokens = 0
        self._offsets = [0]

    def _close_shard(self) -> None:
        if not self._files:
            return
        if self.sft:
            self._files["offsets"] = _HashedFile(self.dir / shard_name("offsets", len(self.shards)))
            self._files["offsets"].write(np.asarray(self._offsets, dtype=np.int64))
        entry: dict = {"tokens": self._shard_tokens}
        if self.sft:
            entry["examples"] = len(self._offsets) - 1
        entry["files"] = {f.path.name: f.finish() for f in self._files.values()}
        self.shards.append(entry)
        self._files = {}

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Pretrain: append documents (already ending in <|eot|>) to the token stream."""
        assert not self.sft
        self.num_examples += len(lengths)
        pos = 0
        while pos < len(tokens):
            if not self._files or self._shard_tokens == self.capacity:
                self._close_shard()
                self._open_shard()
            take = min(self.capacity - self._shard_tokens, len(tokens) - pos)
            self._files["shard"].write(tokens[pos : pos + take].astype(self.dtype, copy=False))
            self._shard_tokens += take
            self.num_tokens += take
            pos += take

    def add_examples(self, tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> None:
        """SFT: append whole examples; `lengths` cut `tokens`/`mask` into examples."""
        assert self.sft
        ends = np.cumsum(lengths)
        done = 0  # examples written so far
        while done < len(lengths):
            if not self._files:
                self._open_shard()
            base = int(ends[done - 1]) if done else 0
            room = self.capacity - self._shard_tokens
            fit = int(np.searchsorted(ends[done:] - base, room, side="right"))  # whole examples that fit
            if fit == 0 and self._shard_tokens:
                self._close_shard()
                continue
            fit = max(fit, 1)  # an example longer than a shard gets a shard of its own
            stop = int(ends[done + fit - 1])
            self._files["shard"].write(tokens[base:stop].astype(self.dtype, copy=False))
            self._files["mask"].write(mask[base:stop].astype(np.uint8, copy=False))
            self._offsets.extend((self._shard_tokens + ends[done : done + fit] - base).tolist())
            self._shard_tokens += stop - base
            self.num_tokens += stop - base
            self.num_examples += fit
            done += fit

    def close(self) -> dict:
        """Finish the last shard; the split's entry for meta.json."""
        self._close_shard()
        return {"num_tokens": self.num_tokens, "num_examples": self.num_examples, "shards": self.shards}
