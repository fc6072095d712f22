"""Training batches drawn from a weighted mixture of token caches, deterministic and resumable.

Pretrain: each row is a random window of T+1 tokens from one cache, the cache chosen by its mix
weight; x = window[:-1], y = window[1:].
SFT: rows pack whole examples (ids + labels) one after another up to T+1 tokens; the example that
does not fit starts the next row. Padding is <|eot|> with label -100, so loss is only ever taken
where the chat template said so (assistant content and its <|eot|>). Each position also carries the
number of its example within the row (`doc_ids`), so attention stays inside one example, as it is
when the model later chats (GPT.forward's doc_ids).

All randomness comes from one numpy Generator seeded by (seed, rank): every DDP rank draws its own
stream, and `state_dict()` / `load_state_dict()` let a resumed run continue the very same stream.

    batches = PretrainBatches(readers, weights, batch_size=8, seq_len=512, seed=1337)
    x, y, doc_ids = batches.next()      # (8, 512) int64 inputs and labels; doc_ids None (SFT: (8, 512))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from ngpt.settings import IGNORE_INDEX
from ngpt.tokcache.reader import PretrainReader, SFTReader


class Batch(NamedTuple):
    x: torch.Tensor  # (B, T) input ids
    y: torch.Tensor  # (B, T) labels: the next id, IGNORE_INDEX (-100) where no loss is taken
    doc_ids: torch.Tensor | None = None  # (B, T) SFT: which packed example of its row a position is in


class _MixtureBatches:
    def __init__(self, readers: Mapping, weights: Mapping[str, float], batch_size: int, seq_len: int, seed: int, rank: int):
        missing = [name for name in weights if name not in readers]
        if missing:
            raise ValueError(f"no cache reader for mixed source(s) {missing}")
        self.names = list(weights)
        self.readers = [readers[n] for n in self.names]
        w = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.p = w / w.sum()
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rng = np.random.Generator(np.random.PCG64([seed, rank]))

    def _pick_sources(self, n: int) -> np.ndarray:
        return self.rng.choice(len(self.names), size=n, p=self.p)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class PretrainBatches(_MixtureBatches):
    """Random (x, y) windows of seq_len tokens from a mixture of PretrainReaders."""

    readers: list[PretrainReader]

    def next(self) -> Batch:
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        which = self._pick_sources(self.batch_size)
        for j, reader in enumerate(self.readers):
            idx = np.flatnonzero(which == j)
            if idx.size:
                rows[idx] = reader.sample(self.rng, idx.size, self.seq_len)
        t = torch.from_numpy(rows)
        return Batch(t[:, :-1], t[:, 1:])


class SFTBatches(_MixtureBatches):
    """Rows that pack whole SFT examples up to seq_len+1 tokens; labels -100 outside assistant spans."""

    readers: list[SFTReader]

    def __init__(self, readers, weights, batch_size, seq_len, seed, rank=0, *, pad_id: int):
        super().__init__(readers, weights, batch_size, seq_len, seed, rank)
        self.pad_id = pad_id
        self.pending: tuple[int, int] | None = None  # (source index, example index) that did not fit the last row
        for name, reader in zip(self.names, self.readers):
            longest = int(reader.lengths().max()) if reader.num_examples else 0
            if longest > seq_len + 1:
                raise ValueError(
                    f"SFT cache {name}/{reader.split} has examples of {longest} tokens but rows hold seq_len+1="
                    f"{seq_len + 1}; rebuild it with data.sft_max_tokens <= {seq_len + 1} or raise model.seq_len."
                )

    def _draw(self) -> tuple[int, int]:
        j = int(self._pick_sources(1)[0])
        return j, int(self.rng.integers(0, self.readers[j].num_examples))

    def next(self) -> Batch:
        width = self.seq_len + 1
        ids = np.full((self.batch_size, width), self.pad_id, dtype=np.int64)
        labels = np.full((self.batch_size, width), IGNORE_INDEX, dtype=np.int64)
        docs = np.empty((self.batch_size, width), dtype=np.int64)
        for row in range(self.batch_size):
            pos, doc = 0, 0
            while True:
                j, i = self.pending if self.pending is not None else self._draw()
                ex_ids, ex_labels = self.readers[j].example(i)
                if pos + len(ex_ids) > width and pos > 0:
                    self.pending = (j, i)  # starts the next row
                    break
                self.pending = None
                ids[row, pos : pos + len(ex_ids)] = ex_ids
                labels[row, pos : pos + len(ex_ids)] = ex_labels
                docs[row, pos : pos + len(ex_ids)] = doc
                pos, doc = pos + len(ex_ids), doc + 1
                if pos >= width:
                    break
            docs[row, pos:] = doc  # the padding after the last example: a document of its own
        return Batch(torch.from_numpy(ids[:, :-1]), torch.from_numpy(labels[:, 1:]), torch.from_numpy(docs[:, :-1]))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pending": list(self.pending) if self.pending else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pending = tuple(state["pending"]) if state.get("pending") else None
