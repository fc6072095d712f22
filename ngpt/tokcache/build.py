"""Build one source's token cache: read → check → tokenize (all cores) → shards → meta.json → rename.

    tok = Tokenizer(settings.tokenizer.model_path)
    meta = build_source(settings, make_source("wikitext", settings), tok)

Pretrain documents become `encode(text) + [<|eot|>]`; SFT conversations become
`render_example(...)` (None → dropped and counted). Every source is read once: `iter_tagged()`
gives both splits in one pass, each item going to its own split's writer; a streamed source gives
its val budget of tokens first, then its train budget, then reading stops. Everything is written
in `{cache}/{phase}/.{source}.tmp-<pid>` and renamed into place after meta.json, so a killed
build leaves no cache, and the next build removes the dead build's temp dir. No clock or pid is
written into the cache: the same inputs and seed give byte-identical directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ngpt.io_utils import atomic_write_text, replace_dir, temp_dir_for
from ngpt.settings import Settings
from ngpt.sources.base import SPLITS, Source
from ngpt.tokcache.encode_pool import EncodeJob, Encoded, EncodePool, chunked
from ngpt.tokcache.layout import FORMAT_VERSION, META_NAME, dtype_for_vocab, source_dir
from ngpt.tokcache.writer import SplitWriter
from ngpt.tokenizer import Tokenizer

# progress(items read, tokens written) so far for this source; called once per chunk.
ProgressFn = Callable[[int, int], None]


class _Sink:
    """One split being written, with its optional token budget."""

    def __init__(self, writer: SplitWriter, budget: int | None):
        self.writer = writer
        self.budget = budget
        self.dropped = 0

    @property
    def full(self) -> bool:
        return self.budget is not None and self.writer.num_tokens >= self.budget

    def take(self, tokens: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None) -> int:
        """Write items (cut by `lengths`) from the front until the budget is met; how many were taken."""
        ends = np.cumsum(lengths)
        count = len(lengths)
        if self.budget is not None:
            room = self.budget - self.writer.num_tokens
            count = min(count, int(np.searchsorted(ends, room, side="left")) + 1)
        stop = int(ends[count - 1]) if count else 0
        if self.writer.sft:
            self.writer.add_examples(tokens[:stop], mask[:stop], lengths[:count])
        else:
            # The budget is exact in tokens: the last document is cut (and its tail never reused).
            if self.budget is not None:
                stop = min(stop, self.budget - self.writer.num_tokens)
            self.writer.add_documents(tokens[:stop], lengths[:count])
        return count


class _Counts:
    """Items read and tokens written so far for the whole source (what the progress bar shows)."""

    def __init__(self, sinks: dict[str, _Sink], progress: ProgressFn | None):
        self.sinks = sinks
        self.progress = progress
        self.items = 0

    def add(self, enc: Encoded) -> None:
        self.items += enc.items
        if self.progress is not None:
            self.progress(self.items, sum(s.writer.num_tokens for s in self.sinks.values()))


def _fill_by_split(sinks: dict[str, _Sink], results: Iterator[Encoded], counts: _Counts) -> None:
    """Route each item to the sink of its split; stop reading when every sink is full."""
    with contextlib.closing(results):
        for enc in results:
            for k, split in enumerate(SPLITS):
                sinks[split].dropped += int(enc.dropped[k])
                if not sinks[split].full:
                    sinks[split].take(*enc.of_split(split))
            counts.add(enc)
            if all(s.full for s in sinks.values()):
                return


def _fill_in_order(sinks: list[_Sink], results: Iterator[Encoded], counts: _Counts) -> None:
    """A stream: items in order to the first sink that is not full; stop reading when all are full."""
    with contextlib.closing(results):
        for enc in results:
            tokens, lengths, mask = enc.tokens, enc.lengths, enc.mask
            open_sinks = [s for s in sinks if not s.full]
            open_sinks[0].dropped += int(enc.dropped.sum())  # (only SFT drops, and no SFT source is streamed)
            for sink in open_sinks:
                taken = sink.take(tokens, lengths, mask)
                cut = int(lengths[:taken].sum())
                tokens, lengths, mask = tokens[cut:], lengths[taken:], None if mask is None else mask[cut:]
            counts.add(enc)
            if all(s.full for s in sinks):
                return


def _split_meta(source: Source, split: str, sinks: dict[str, _Sink], sft_max_tokens: int) -> dict:
    sink = sinks[split]
    meta = sink.writer.close()
    if meta["num_tokens"] == 0:
        what = "conversations" if source.kind == "sft" else "documents"
        why = ""
        if sink.dropped:
            why = (f"; all {sink.dropped} conversations were dropped (under 2 tokens, or nothing to train on "
                   f"after left-truncation to data.sft_max_tokens={sft_max_tokens})")
        elif source.streamed:
            val = sinks["val"].writer.num_tokens
            why = (f"; the stream ended after {val:,} tokens, all taken by val (budget {sinks['val'].budget:,}): "
                   "give more data or lower the val budget (e.g. --fineweb-val-tokens)")
        raise ValueError(
            f"Source '{source.name}' ({source.origin}): the {split} split is empty (no {what}){why}. "
            f"Check the data at data.sources.{source.name} / --source {source.name}=PATH."
        )
    if source.kind == "sft":
        meta["num_dropped"] = sink.dropped
    return meta


def resolved_workers(settings: Settings) -> int:
    return settings.data.workers or os.cpu_count() or 1


def build_source(settings: Settings, source: Source, tok: Tokenizer, progress: ProgressFn | None = None) -> dict:
    """Build `{cache}/{phase}/{source}` from scratch; returns its meta.json contents."""
    data = settings.data
    budgets = source.token_budgets()
    if source.streamed and any(budgets.get(split) is None for split in SPLITS):
        raise ValueError(f"Source '{source.name}' is streamed: it needs a token budget for train and val, got {budgets}.")
    final = source_dir(data.cache_dir, source.kind, source.name)
    tmp = temp_dir_for(final)
    try:
        dtype = dtype_for_vocab(tok.vocab_size)
        sft = source.kind == "sft"
        sinks = {
            split: _Sink(SplitWriter(tmp / split, dtype, data.shard_bytes, sft, tok.vocab_size), budgets.get(split))
            for split in SPLITS
        }
        job = EncodeJob(str(tok.path), tok.sha256, source.name, source.kind, data.sft_max_tokens, dtype.name)
        counts = _Counts(sinks, progress)
        with EncodePool(job, resolved_workers(settings), tok) as pool:
            if source.streamed:
                # One stream: val first (a fixed, reproducible slice from the start), then train; the
                # budgets route it, so the tag means nothing here.
                stream = (("train", doc) for doc in source.iter_stream())
                _fill_in_order([sinks["val"], sinks["train"]], pool.map(chunked(stream)), counts)
            else:
                # Both splits in one read of the source, each item to its own split's writer.
                _fill_by_split(sinks, pool.map(chunked(source.iter_tagged())), counts)
        build_args: dict = {
            "origin": source.origin,
            "streamed": source.streamed,
            "token_budgets": {split: budgets.get(split) for split in SPLITS},
            "shard_bytes": data.shard_bytes,
            "val_fraction": data.val_fraction,
        }
        if sft:
            build_args["sft_max_tokens"] = data.sft_max_tokens
        meta = {
            "format_version": FORMAT_VERSION,
            "phase": source.kind,
            "source": source.name,
            "tokenizer_sha256": tok.sha256,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "eot_id": tok.eot_id,
            "seed": data.seed,
            "build": build_args,
            "splits": {split: _split_meta(source, split, sinks, data.sft_max_tokens) for split in SPLITS},
        }
        atomic_write_text(tmp / META_NAME, json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
