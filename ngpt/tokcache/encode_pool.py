"""Tokenize documents/conversations on every core with bounded memory and a deterministic order.

Items come tagged with their split, (split, item), so both splits of a source share one stream
and one read. They are grouped into chunks (by characters, so one huge book does not make a huge
chunk). With `workers` = N > 1 there are N tokenizing processes: N - 1 pool processes that each
hold the Tokenizer once, and this one, which reads the source and encodes a chunk itself whenever
the pool already has two chunks per process queued. (The reading process would otherwise sit
mostly idle while N pool processes share N cores with it; encoding here also needs no pickling
and no pipe, which on 2 cores made builds ~4 % faster.) At most `2 × workers` chunks are in
flight; results come back in input order, so the output does not depend on the number of
workers. (`Pool.imap` would read an endless stream eagerly, hence apply_async and a deque.)

    with EncodePool(job, workers=4) as pool:
        for enc in pool.map(chunked(source.iter_tagged())):
            tokens, lengths, mask = enc.of_split("val")  # the kept val items, in order
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool

import numpy as np

from ngpt.chat_format import render_example
from ngpt.sources.base import SPLITS, Conversation, Document, Split
from ngpt.tokenizer import Tokenizer, UnencodableText, check_encodable, check_training_text

Item = Document | Conversation
Tagged = tuple[Split, Item]
CHUNK_CHARS = 1 << 20
CHUNK_ITEMS = 1024
DRAIN_SECONDS = 10.0  # bound on waiting for a pool process that died mid-chunk (its chunk never comes back)


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
    splits: np.ndarray  # per kept item: its split's index in SPLITS
    dropped: np.ndarray  # per split: SFT examples render_example rejected (too short / nothing trained)
    items: int  # items read, kept or not

    def of_split(self, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(tokens, lengths, mask) of the kept items of one split, in order."""
        keep = self.splits == SPLITS.index(split)
        if keep.all():
            return self.tokens, self.lengths, self.mask
        per_token = np.repeat(keep, self.lengths)
        return self.tokens[per_token], self.lengths[keep], None if self.mask is None else self.mask[per_token]


def item_chars(item: Item) -> int:
    if isinstance(item, Document):
        return len(item.text)
    return sum(len(m["content"]) for m in item.messages)


def chunked(items: Iterable[Tagged], max_chars: int = CHUNK_CHARS, max_items: int = CHUNK_ITEMS) -> Iterator[list[Tagged]]:
    """Chunks of up to max_chars characters / max_items items. The first ones are smaller (1/16,
    doubling), so every worker has work a few milliseconds after the start, not after megabytes
    of reading."""
    chunk: list[Tagged] = []
    chars = 0
    limit = max(1, max_chars // 16)
    for tagged in items:
        chunk.append(tagged)
        chars += item_chars(tagged[1])
        if chars >= limit or len(chunk) >= max_items:
            yield chunk
            chunk, chars = [], 0
            limit = min(2 * limit, max_chars)
    if chunk:
        yield chunk


def encode_chunk(tok: Tokenizer, job: EncodeJob, items: list[Tagged]) -> Encoded:
    """Check every text for special-token strings, then encode (pretrain) or render (SFT).

    Text that cannot be encoded (a lone surrogate, which the jsonl readers already reject with the
    file and line) is an UnencodableText naming the source, the item and the character."""
    pieces: list[list[int]] = []
    masks: list[list[int]] = []
    splits: list[int] = []
    dropped = np.zeros(len(SPLITS), dtype=np.int64)
    for split, item in items:
        side = SPLITS.index(split)
        try:
            if isinstance(item, Document):
                check_training_text(item.text, job.source, item.ref)
                pieces.append(tok.encode(item.text) + [tok.eot_id])
                splits.append(side)
                continue
            for k, msg in enumerate(item.messages):
                check_training_text(msg["content"], job.source, f"{item.ref} (message {k}, {msg['role']})")
            example = render_example(tok, item.messages, job.sft_max_tokens)
        except UnencodableText:  # free until it happens; then find which text, to say where
            _name_unencodable(job, item)
            raise
        if example is None:
            dropped[side] += 1
            continue
        pieces.append(example[0])
        masks.append(example[1])
        splits.append(side)
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    total = int(lengths.sum())
    tokens = np.fromiter(itertools.chain.from_iterable(pieces), dtype=job.dtype, count=total)
    mask = None
    if job.kind == "sft":
        mask = np.fromiter(itertools.chain.from_iterable(masks), dtype=np.uint8, count=total)
    return Encoded(tokens, lengths, mask, np.asarray(splits, dtype=np.uint8), dropped, len(items))


def _name_unencodable(job: EncodeJob, item: Item) -> None:
    """UnencodableText naming the source, the item (and message) and the character that is not text."""
    if isinstance(item, Document):
        check_encodable(item.text, f"Source '{job.source}', document {item.ref}")
    for k, msg in enumerate(getattr(item, "messages", ())):
        check_encodable(msg["content"], f"Source '{job.source}', {item.ref} (message {k}, {msg['role']})")


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


def _encode_task(job: EncodeJob, items: list[Tagged]) -> Encoded:
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


def _widen_result_pipe(pool: Pool) -> None:
    """Linux: let one chunk's result (~0.5 MB) fit in the pipe it comes back through.

    A pool process writes its result into a pipe that a thread of this process drains. A 64 KiB
    pipe takes a dozen reads, and the thread needs the GIL for each while this process encodes a
    chunk of its own, so the pool process sat blocked in its write (up to 5 ms a read). With a
    1 MiB pipe (the unprivileged maximum) it writes and moves on: builds got ~4 % faster. It pokes
    at the pool's private `_outqueue`, so anything unexpected just leaves the pipe as it is.
    """
    try:
        import fcntl

        fcntl.fcntl(pool._outqueue._writer.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


class _Local:
    """A chunk encoded in this process, held in the queue of results like a pool's AsyncResult."""

    def __init__(self, tok: Tokenizer, job: EncodeJob, chunk: list[Tagged]):
        self.error: Exception | None = None
        try:
            self.value: Encoded | None = encode_chunk(tok, job, chunk)
        except Exception as e:  # raised when its turn comes, so the first bad item in order is the one reported
            self.value, self.error = None, e

    def ready(self) -> bool:
        return True

    def get(self) -> Encoded:
        if self.error is not None:
            raise self.error
        return self.value


class EncodePool:
    """workers == 1: encode in this process; otherwise workers - 1 pool processes and this one."""

    def __init__(self, job: EncodeJob, workers: int, tokenizer: Tokenizer):
        self.job = job
        self.workers = workers
        self.tok = tokenizer
        self.pool: Pool | None = None

    def __enter__(self) -> "EncodePool":
        if self.workers > 1:
            _tokenizers[self.job.tokenizer_path] = self.tok
            # Started before the source is read, so no reader thread (e.g. a hub download) is forked mid-flight.
            self.pool = _context().Pool(self.workers - 1, initializer=_init_worker)
            _widen_result_pipe(self.pool)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            # Chunks still in flight after an error or an early stop are not wanted: terminate.
            self.pool.terminate()
            self.pool.join()

    def map(self, chunks: Iterable[list[Tagged]]) -> Iterator[Encoded]:
        """Encoded chunks in input order; stops reading `chunks` when the caller stops iterating."""
        if self.pool is None:
            for chunk in chunks:
                yield encode_chunk(self.tok, self.job, chunk)
            return
        in_flight: deque[AsyncResult | _Local] = deque()
        queued = 0  # chunks handed to the pool and not yet yielded
        try:
            for chunk in chunks:
                while in_flight and (len(in_flight) >= 2 * self.workers or in_flight[0].ready()):
                    queued -= not isinstance(in_flight[0], _Local)
                    yield in_flight.popleft().get()
                if queued < 2 * (self.workers - 1):
                    in_flight.append(self.pool.apply_async(_encode_task, (self.job, chunk)))
                    queued += 1
                else:
                    in_flight.append(_Local(self.tok, self.job, chunk))
            while in_flight:
                yield in_flight.popleft().get()
        finally:
            # Stopped early (budgets met, an error): let the pool finish the chunks it was handed before
            # __exit__ terminates it. Pool.terminate() can hang for good when its task thread is still
            # writing a large chunk into the pipe of a pool process that it has just killed.
            deadline = time.monotonic() + DRAIN_SECONDS
            for result in in_flight:
                if isinstance(result, AsyncResult):
                    result.wait(max(0.0, deadline - time.monotonic()))
