"""Tokenize documents/conversations on every core with bounded memory and a deterministic order.

Items are grouped into chunks (by characters, so one huge book does not make a huge chunk) and
handed to worker processes that each hold the Tokenizer once. At most `2 × workers` chunks are
in flight; results come back in submission order, so the output does not depend on the number
of workers. (`Pool.imap` would read an endless stream eagerly, hence apply_async and a deque.)

    with EncodePool(job, workers=4) as pool:
        for enc in pool.map(chunked(source.iter_split("train"))):
            ...  # enc.tokens, enc.lengths (one per kept item), enc.mask (SFT), enc.dropped
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool

import numpy as np

from ngpt.chat_format import render_example
from ngpt.sources.base import Conversation, Document
from ngpt.tokenizer import Tokenizer, check_training_text

Item = Document | Conversation
CHUNK_CHARS = 1 << 20
CHUNK_ITEMS = 1024


@dataclass(frozen=True)
class EncodeJob:
    """Everything a worker needs to turn items into ids (picklable: it crosses process boundaries)."""

    tokenizer_path: str
    tokenizer_sha: str
    source: str
    kind: str  # "pretrain" | "sft"
    sft_max_tokens: int
    dtype: str


@dataclass
class Encoded:
    """One chunk's output: kept items' ids back to back; `lengths` cut them per item."""

    tokens: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray | None  # SFT: 1 = trained token
    dropped: int  # SFT examples render_example rejected (too short / nothing trained)
    items: int  # items read, kept or not


def item_chars(item: Item) -> int:
    if isinstance(item, Document):
        return len(item.text)
    return sum(len(m["content"]) for m in item.messages)


def chunked(items: Iterable[Item], max_chars: int = CHUNK_CHARS, max_items: int = CHUNK_ITEMS) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    chars = 0
    for item in items:
        chunk.append(item)
        chars += item_chars(item)
        if chars >= max_chars or len(chunk) >= max_items:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def encode_chunk(tok: Tokenizer, job: EncodeJob, items: list[Item]) -> Encoded:
    """Check every text for special-token strings, then encode (pretrain) or render (SFT)."""
    pieces: list[list[int]] = []
    masks: list[list[int]] = []
    dropped = 0
    for item in items:
        if isinstance(item, Document):
            check_training_text(item.text, job.source, item.ref)
            pieces.append(tok.encode(item.text) + [tok.eot_id])
            continue
        for k, msg in enumerate(item.messages):
            check_training_text(msg["content"], job.source, f"{item.ref} (message {k}, {msg['role']})")
        example = render_example(tok, item.messages, job.sft_max_tokens)
        if example is None:
            dropped += 1
            continue
        pieces.append(example[0])
        masks.append(example[1])
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    total = int(lengths.sum())
    tokens = np.fromiter(itertools.chain.from_iterable(pieces), dtype=job.dtype, count=total)
    mask = None
    if job.kind == "sft":
        mask = np.fromiter(itertools.chain.from_iterable(masks), dtype=np.uint8, count=total)
    return Encoded(tokens, lengths, mask, dropped, len(items))


# Per-process tokenizer cache. Forked workers inherit the parent's entry (no reload); spawned ones
# load it on their first chunk, so a broken model file surfaces as that chunk's error (mp.Pool would
# restart a worker whose initializer raises, forever).
_tokenizers: dict[str, Tokenizer] = {}


def _worker_tokenizer(job: EncodeJob) -> Tokenizer:
    tok = _tokenizers.get(job.tokenizer_path)
    if tok is None:
        tok = _tokenizers[job.tokenizer_path] = Tokenizer(job.tokenizer_path)
    if tok.sha256 != job.tokenizer_sha:
        raise RuntimeError(f"Tokenizer {job.tokenizer_path} changed while the cache was being built; build again.")
    return tok


def _encode_task(job: EncodeJob, items: list[Item]) -> Encoded:
    return encode_chunk(_worker_tokenizer(job), job, items)


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: let the parent handle it (and terminate the pool)
    # instead of every worker printing a KeyboardInterrupt traceback. (A parent killed with -9 needs
    # nothing here: the task pipe reaches EOF and idle workers exit.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _context() -> mp.context.BaseContext:
    # Linux: fork. Workers start at once with every module already imported; spawn would re-run the
    # `ngpt` script's imports (the whole CLI, torch included) in each worker. The parent may have a
    # Rich refresh thread alive; the workers never touch the console, so no lock it holds matters.
    # Elsewhere fork is missing or unsafe (macOS system libraries), so spawn.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


class EncodePool:
    """workers == 1: encode in this process; otherwise a process pool with bounded, ordered results."""

    def __init__(self, job: EncodeJob, workers: int, tokenizer: Tokenizer):
        self.job = job
        self.workers = workers
        self.tok = tokenizer
        self.pool: Pool | None = None

    def __enter__(self) -> "EncodePool":
        if self.workers > 1:
            _tokenizers[self.job.tokenizer_path] = self.tok
            # Started before the source is read, so no reader thread (e.g. a hub download) is forked mid-flight.
            self.pool = _context().Pool(self.workers, initializer=_init_worker)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            # Chunks still in flight after an error or an early stop are not wanted: terminate.
            self.pool.terminate()
            self.pool.join()

    def map(self, chunks: Iterable[list[Item]]) -> Iterator[Encoded]:
        """Encoded chunks in input order; stops reading `chunks` when the caller stops iterating."""
        if self.pool is None:
            for chunk in chunks:
                yield encode_chunk(self.tok, self.job, chunk)
            return
        in_flight: deque[AsyncResult] = deque()
        for chunk in chunks:
            in_flight.append(self.pool.apply_async(_encode_task, (self.job, chunk)))
            if len(in_flight) >= 2 * self.workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()
