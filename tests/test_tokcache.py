"""Token caches: writer/reader round trips, determinism, shards, budgets, validation, crash safety.

    pytest tests/test_tokcache.py
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, synthetic_text
from ngpt.chat_format import render
from ngpt.settings import IGNORE_INDEX
from ngpt.settings import load_settings
from ngpt.sources.base import Conversation, Document, Source
from ngpt.tokcache import PretrainReader, SFTReader, SplitWriter, build_source, dtype_for_vocab, encode_pool, validate
from ngpt.tokcache import build as tokcache_build
from ngpt.tokcache.encode_pool import CHUNK_ITEMS
from ngpt.tokenizer import SourceSample, SpecialTokenInText, Tokenizer, train_tokenizer


class ListSource(Source):
    """A source over in-memory items; a streamed one repeats `stream` forever and counts what was read."""

    def __init__(self, name, kind, splits=None, stream=None, budgets=None):
        self.name, self.kind = name, kind
        self.splits = splits or {}
        self.stream = stream
        self.streamed = stream is not None
        self.budgets = budgets
        self.read = 0

    @property
    def origin(self) -> str:
        return "test memory"

    def check(self) -> None:
        pass

    def iter_split(self, split):
        yield from self.splits[split]

    def iter_stream(self):
        i = 0
        while True:  # endless, like fineweb: only the builder's budgets stop it
            item = self.stream[i % len(self.stream)]
            self.read += 1
            yield Document(f"{item.ref}#{i}", item.text)
            i += 1

    def token_budgets(self):
        return self.budgets or super().token_budgets()


def make_settings(tmp_path: Path, tok_path: Path, **data) -> object:
    data = {"cache_dir": str(tmp_path / "cache"), "shard_bytes": 1024, "workers": 1, **data}
    return load_settings(overrides={"data": data, "tokenizer": {"model_path": str(tok_path)}}, environ={})


def docs(n: int, seed: int = 0) -> list[Document]:
    return [Document(f"doc{i}", synthetic_text(3 + i % 5, seed=seed + i)) for i in range(n)]


def conversations(n: int) -> list[Conversation]:
    out = []
    for i in range(n):
        msgs = [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": synthetic_text(1, seed=i)},
            {"role": "assistant", "content": synthetic_text(2, seed=1000 + i)},
        ]
        if i % 3 == 0:  # multi-turn
            msgs += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": synthetic_text(1, seed=i + 7)}]
        out.append(Conversation(f"conv{i}", msgs))
    return out


def pretrain_source(n_train=60, n_val=8) -> ListSource:
    return ListSource("wikitext", "pretrain", {"train": docs(n_train), "val": docs(n_val, seed=500)})


def sft_source() -> ListSource:
    # The last conversation loses its only assistant turn to left-truncation: dropped and counted.
    dropped = Conversation("drop-me", [{"role": "assistant", "content": "hi"}, {"role": "user", "content": synthetic_text(40)}])
    return ListSource("oasst1", "sft", {"train": conversations(40) + [dropped], "val": conversations(5)})


def read_stream(src_dir: Path, split: str, dtype: str) -> np.ndarray:
    meta = json.loads((src_dir / "meta.json").read_text())
    files = [src_dir / split / f"shard_{i:05d}.bin" for i in range(len(meta["splits"][split]["shards"]))]
    return np.concatenate([np.fromfile(f, dtype=dtype) for f in files])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pretrain_round_trip_and_shard_rollover(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path)
    source = pretrain_source()
    meta = build_source(settings, source, tiny_tokenizer)
    src_dir = tmp_path / "cache" / "pretrain" / "wikitext"

    expected = [i for d in source.splits["train"] for i in tiny_tokenizer.encode(d.text) + [tiny_tokenizer.eot_id]]
    train = meta["splits"]["train"]
    assert meta["dtype"] == "uint16" and meta["tokenizer_sha256"] == tiny_tokenizer.sha256
    assert train["num_tokens"] == len(expected) and train["num_examples"] == 60
    assert len(train["shards"]) == -(-len(expected) // 512) > 2  # 1024-byte shards of uint16 roll over
    assert all(s["files"][f"shard_{i:05d}.bin"]["bytes"] <= 1024 for i, s in enumerate(train["shards"]))
    stream = read_stream(src_dir, "train", "uint16")
    assert stream.tolist() == expected
    assert int((stream == tiny_tokenizer.eot_id).sum()) == 60  # exactly one separator per document

    reader = PretrainReader.open(settings.data.cache_dir, "wikitext", "train", tiny_tokenizer)
    assert (reader.num_tokens, reader.num_shards, reader.num_documents) == (len(expected), len(train["shards"]), 60)
    xy = reader.sample(np.random.default_rng(0), batch_size=6, T=32)
    assert xy.shape == (6, 33) and xy.dtype == np.int64
    assert xy.min() >= 0 and xy.max() < tiny_tokenizer.vocab_size
    text = ",".join(map(str, expected))
    assert all(",".join(map(str, row)) in text for row in xy.tolist())  # each window is real consecutive tokens
    with pytest.raises(ValueError, match="no shard holds T\\+1"):
        reader.sample(np.random.default_rng(0), 1, 600)
    assert all(r.ok for r in validate(settings, tiny_tokenizer, caches=[("pretrain", "wikitext")], deep=True))


def test_sft_round_trip_labels_and_examples_within_shards(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path, sft_max_tokens=64)
    source = sft_source()
    meta = build_source(settings, source, tiny_tokenizer)
    train = meta["splits"]["train"]
    assert train["num_examples"] == 40 and train["num_dropped"] == 1
    assert len(train["shards"]) > 1 and meta["build"]["sft_max_tokens"] == 64

    reader = SFTReader.open(settings.data.cache_dir, "oasst1", "train", tiny_tokenizer)
    assert reader.num_examples == 40
    for i, conv in enumerate(source.splits["train"][:40]):
        ids, labels = reader.example(i)
        want_ids, want_mask = render(tiny_tokenizer, conv.messages)
        want_ids, want_mask = want_ids[-64:], want_mask[-64:]
        assert ids.tolist() == want_ids
        assert labels.tolist() == [t if m else IGNORE_INDEX for t, m in zip(want_ids, want_mask)]
    ids, labels = reader.example(1)
    asst = ids.tolist().index(tiny_tokenizer.asst_id)
    assert (labels[: asst + 1] == IGNORE_INDEX).all()  # system and user spans, and the <|asst|> marker
    assert (labels[asst + 1 :] == ids[asst + 1 :]).all() and labels[-1] == tiny_tokenizer.eot_id
    assert reader.lengths().sum() == train["num_tokens"]
    with pytest.raises(IndexError):
        reader.example(40)
    assert all(r.ok for r in validate(settings, tiny_tokenizer, caches=[("sft", "oasst1")], deep=True))


def test_builds_are_byte_identical_across_runs_and_worker_counts(tmp_path, tiny_tokenizer, tiny_tokenizer_path, monkeypatch):
    trees = []
    for run, workers in enumerate((1, 1, 2, 2)):
        if run == 3:  # the start method macOS/Windows get; Linux forks
            monkeypatch.setattr(encode_pool, "_context", lambda: multiprocessing.get_context("spawn"))
        settings = make_settings(tmp_path / f"run{run}", tiny_tokenizer_path, workers=workers)
        build_source(settings, pretrain_source(), tiny_tokenizer)
        build_source(settings, sft_source(), tiny_tokenizer)
        trees.append(tree_bytes(tmp_path / f"run{run}" / "cache"))
    assert trees[0] == trees[1] == trees[2] == trees[3]
    assert "pretrain/wikitext/meta.json" in trees[0] and "sft/oasst1/val/offsets_00000.bin" in trees[0]


class InterleavedSource(ListSource):
    """Both splits in one read with val items scattered among train items, as carved sources give them."""

    def iter_tagged(self):
        train, val = iter(self.splits["train"]), iter(self.splits["val"])
        for i, item in enumerate(train):
            yield "train", item
            if i % 5 == 2 and (v := next(val, None)) is not None:
                yield "val", v
        yield from (("val", v) for v in val)


def test_one_read_of_both_splits_writes_each_split_as_its_own_read_would(tmp_path, tiny_tokenizer, tiny_tokenizer_path, monkeypatch):
    dropped = Conversation("drop-me too", [{"role": "assistant", "content": "hey"}, {"role": "user", "content": synthetic_text(40, seed=3)}])
    trees = []
    for run, (cls, workers) in enumerate(((ListSource, 1), (InterleavedSource, 1), (InterleavedSource, 2))):
        # Chunks of a few items each, so one chunk holds both splits and splits straddle chunks.
        monkeypatch.setattr(tokcache_build, "chunked", functools.partial(encode_pool.chunked, max_items=7))
        settings = make_settings(tmp_path / f"run{run}", tiny_tokenizer_path, workers=workers, sft_max_tokens=64)
        build_source(settings, cls("wikitext", "pretrain", pretrain_source().splits), tiny_tokenizer)
        sft = sft_source().splits
        meta = build_source(settings, cls("oasst1", "sft", {"train": sft["train"], "val": sft["val"] + [dropped]}), tiny_tokenizer)
        assert [meta["splits"][s]["num_dropped"] for s in ("train", "val")] == [1, 1]
        assert [meta["splits"][s]["num_examples"] for s in ("train", "val")] == [40, 5]
        trees.append(tree_bytes(tmp_path / f"run{run}" / "cache"))
    assert trees[0] == trees[1] == trees[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_budgets_val_first_then_train_and_reading_stops(tmp_path, tiny_tokenizer, tiny_tokenizer_path, workers):
    settings = make_settings(tmp_path, tiny_tokenizer_path, workers=workers)
    stream = docs(10)
    source = ListSource("fineweb_edu", "pretrain", stream=stream, budgets={"train": 3000, "val": 700})
    meta = build_source(settings, source, tiny_tokenizer)  # the stream is endless: only budgets end it
    assert meta["splits"]["val"]["num_tokens"] == 700 and meta["splits"]["train"]["num_tokens"] == 3000
    assert meta["build"]["token_budgets"] == {"train": 3000, "val": 700} and meta["build"]["streamed"]
    # Reading stopped: what the budgets needed (one chunk here) plus at most the chunks in flight.
    assert source.read <= CHUNK_ITEMS * (1 + 2 * workers)
    src_dir = tmp_path / "cache" / "pretrain" / "fineweb_edu"
    encoded = [tiny_tokenizer.encode(d.text) + [tiny_tokenizer.eot_id] for d in stream * 100]
    flat = [i for e in encoded for i in e]
    val = read_stream(src_dir, "val", "uint16").tolist()
    assert val == flat[:700]  # val is the start of the stream
    # train starts at the document after the one val cut (no half document shared by both splits)
    ends = np.cumsum([len(e) for e in encoded])
    next_doc = int(np.searchsorted(ends, 700, side="left")) + 1
    assert read_stream(src_dir, "train", "uint16").tolist() == flat[ends[next_doc - 1] : ends[next_doc - 1] + 3000]


def test_special_token_text_is_a_hard_error_and_writes_nothing(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path)
    bad = docs(3) + [Document("page 7 of bad.txt", "ordinary words then <|eot|> inside")]
    with pytest.raises(SpecialTokenInText, match=r"Source 'wikitext', document page 7 of bad.txt.*'<\|eot\|>'.*offset 20"):
        build_source(settings, ListSource("wikitext", "pretrain", {"train": bad, "val": docs(2)}), tiny_tokenizer)
    conv = Conversation("row 3", [{"role": "user", "content": "hi <|asst|>"}, {"role": "assistant", "content": "ok"}])
    with pytest.raises(SpecialTokenInText, match=r"'oasst1', document row 3 \(message 0, user\).*offset 3"):
        build_source(settings, ListSource("oasst1", "sft", {"train": [conv], "val": [conv]}), tiny_tokenizer)
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_empty_split_is_an_error_naming_source_and_split(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path)
    with pytest.raises(ValueError, match="Source 'gutenberg'.*the val split is empty"):
        build_source(settings, ListSource("gutenberg", "pretrain", {"train": docs(3), "val": []}), tiny_tokenizer)
    assert not (tmp_path / "cache" / "pretrain" / "gutenberg").exists()


def test_sft_examples_never_straddle_shards(tmp_path):
    lengths = np.array([3, 600, 5, 500, 10, 2], dtype=np.int64)  # 512-token shards; 600 is oversize
    tokens = np.arange(lengths.sum(), dtype=np.int64) % 300
    mask = (np.arange(lengths.sum()) % 2).astype(np.uint8)
    w = SplitWriter(tmp_path / "train", np.dtype(np.uint16), 1024, sft=True, vocab_size=512)
    w.add_examples(tokens[:3], mask[:3], lengths[:1])  # across calls too
    w.add_examples(tokens[3:], mask[3:], lengths[1:])
    meta = w.close()
    assert [s["examples"] for s in meta["shards"]] == [1, 1, 2, 2]
    assert [s["tokens"] for s in meta["shards"]] == [3, 600, 505, 12]
    assert meta["num_tokens"] == lengths.sum() and meta["num_examples"] == 6
    offsets = [np.fromfile(tmp_path / "train" / f"offsets_{i:05d}.bin", dtype=np.int64).tolist() for i in range(4)]
    assert offsets == [[0, 3], [0, 600], [0, 5, 505], [0, 10, 12]]
    stream = np.concatenate([np.fromfile(tmp_path / "train" / f"shard_{i:05d}.bin", dtype=np.uint16) for i in range(4)])
    masks = np.concatenate([np.fromfile(tmp_path / "train" / f"mask_{i:05d}.bin", dtype=np.uint8) for i in range(4)])
    assert stream.tolist() == tokens.tolist() and masks.tolist() == mask.tolist()


def test_dtype_follows_vocab_and_too_large_vocab_is_rejected(tmp_path):
    assert dtype_for_vocab(65536) == np.uint16 and dtype_for_vocab(65537) == np.uint32
    with pytest.raises(ValueError, match="does not fit"):
        dtype_for_vocab(2**33)
    with pytest.raises(ValueError, match="70000 does not fit uint16"):
        SplitWriter(tmp_path / "train", np.dtype(np.uint16), 1024, sft=False, vocab_size=70000)


def test_cache_from_another_tokenizer_is_rejected(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path)
    build_source(settings, pretrain_source(), tiny_tokenizer)
    train_tokenizer([SourceSample("s", [synthetic_text(800, seed=3)], "t")], tmp_path / "tok2", 400, seed=0, threads=1)
    other = Tokenizer(tmp_path / "tok2" / "spm.model")
    with pytest.raises(ValueError, match=f"built with tokenizer {tiny_tokenizer.sha256}, current tokenizer is {other.sha256}"):
        PretrainReader.open(settings.data.cache_dir, "wikitext", "train", other)
    rows = validate(settings, other, caches=[("pretrain", "wikitext")])
    assert [r.ok for r in rows] == [False, False] and "ngpt cache build wikitext" in rows[0].status


def test_validate_catches_truncated_and_corrupted_shards(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path)
    build_source(settings, sft_source(), tiny_tokenizer)
    caches = [("sft", "oasst1")]
    shard = tmp_path / "cache" / "sft" / "oasst1" / "train" / "shard_00001.bin"
    data = shard.read_bytes()
    # Same size, two tokens swapped: only --deep (re-hash every file) can see it.
    swapped = data[2:4] + data[0:2] + data[4:]
    assert swapped != data
    shard.write_bytes(swapped)
    assert all(r.ok for r in validate(settings, tiny_tokenizer, caches=caches))
    deep = {r.split: r for r in validate(settings, tiny_tokenizer, caches=caches, deep=True)}
    assert not deep["train"].ok and "shard_00001.bin: sha256 differs" in deep["train"].status and deep["val"].ok

    shard.write_bytes(data[:-6])
    rows = {r.split: r for r in validate(settings, tiny_tokenizer, caches=caches)}
    assert not rows["train"].ok and rows["val"].ok
    assert f"{shard}: expected {len(data):,} bytes, found {len(data) - 6:,} bytes" in rows["train"].status
    with pytest.raises(ValueError, match="shard_00001.bin has"):
        SFTReader.open(settings.data.cache_dir, "oasst1", "train", tiny_tokenizer)


def test_missing_caches_list_every_missing_path(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = load_settings(
        overrides={
            "data": {
                "cache_dir": str(tmp_path / "c"),
                "shard_bytes": 1024,
                "workers": 1,
                "mix_pretrain": {"gutenberg": 0.5, "roam": 0.5},
                "val_pretrain_source": "wikitext",
                "mix_sft": {"primer": 0.5, "dolly15k": 0.5},
            },
            "tokenizer": {"model_path": str(tiny_tokenizer_path)},
        },
        environ={},
    )
    build_source(settings, ListSource("gutenberg", "pretrain", {"train": docs(5), "val": docs(2)}), tiny_tokenizer)
    with pytest.raises(FileNotFoundError) as err:
        validate(settings, tiny_tokenizer)
    msg = str(err.value)
    c = tmp_path / "c"
    for phase, name in [("pretrain", "wikitext"), ("pretrain", "roam"), ("sft", "dolly15k"), ("sft", "primer")]:
        for tail in ("meta.json", "train/", "val/"):
            assert f"{c / phase / name}/{tail}" in msg
        assert f"`ngpt cache build {name}`" in msg
    assert "gutenberg" not in msg and "ngpt cache build-all" in msg
    with pytest.raises(FileNotFoundError, match="pretrain/wikitext/meta.json") as err:
        validate(settings, tiny_tokenizer, phase="pretrain")
    assert "dolly15k" not in str(err.value)


KILLED_BUILD = """
import json, sys
from ngpt.settings import load_settings
from ngpt.sources.base import Document, Source
from ngpt.tokcache.build import build_source
from ngpt.tokenizer import Tokenizer

class StdinSource(Source):
    name, kind = "wikitext", "pretrain"
    origin = "stdin"
    def check(self):
        pass
    def iter_split(self, split):
        for i, line in enumerate(sys.stdin):  # blocks once the test stops writing: a build frozen mid-way
            yield Document(f"line {i}", line)

settings = load_settings(overrides=json.loads(sys.argv[1]), environ={})
build_source(settings, StdinSource(), Tokenizer(settings.tokenizer.model_path))
"""


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker pids from /proc (Linux)")
def test_build_killed_mid_way_leaves_no_cache_and_rerun_completes(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    settings = make_settings(tmp_path, tiny_tokenizer_path)
    overrides = {"data": {"cache_dir": settings.data.cache_dir, "shard_bytes": 1024, "workers": 3},
                 "tokenizer": {"model_path": str(tiny_tokenizer_path)}}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, json.dumps(overrides)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True,
    )
    phase_dir = tmp_path / "cache" / "pretrain"
    tmp_dir = phase_dir / f".wikitext.tmp-{proc.pid}"
    try:
        proc.stdin.write("\n".join(synthetic_text(1, seed=i) for i in range(8000)) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not (tmp_dir / "train" / "shard_00002.bin").exists():  # shards are being written
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the build never started writing shards"
            time.sleep(0.02)
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(workers) == 2  # 3 tokenizing processes: the builder itself and 2 pool processes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers):  # orphaned workers notice and exit
        assert time.monotonic() < deadline, "tokenizer workers outlived their killed parent"
        time.sleep(0.05)
    assert tmp_dir.is_dir() and not (phase_dir / "wikitext").exists()
    with pytest.raises(FileNotFoundError, match="pretrain/wikitext/meta.json"):
        validate(settings, tiny_tokenizer, caches=[("pretrain", "wikitext")])

    build_source(settings, pretrain_source(), tiny_tokenizer)
    assert not tmp_dir.exists() and sorted(p.name for p in phase_dir.iterdir()) == ["wikitext"]
    assert all(r.ok for r in validate(settings, tiny_tokenizer, caches=[("pretrain", "wikitext")]))


def test_real_samples_round_trip(tmp_path, tiny_tokenizer, tiny_tokenizer_path, shared_data):
    from ngpt.sources import make_source

    settings = make_settings(
        tmp_path, tiny_tokenizer_path, shard_bytes=1 << 16,
        sources={"wikitext": str(shared_data / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"),
                 "oasst1": str(shared_data / "oasst1")},
    )
    wiki = make_source("wikitext", settings)
    meta = build_source(settings, wiki, tiny_tokenizer)
    src_dir = tmp_path / "cache" / "pretrain" / "wikitext"
    for split in ("train", "val"):
        stream = read_stream(src_dir, split, "uint16")
        texts = [d.text for d in wiki.iter_split(split)]
        assert meta["splits"][split]["num_examples"] == len(texts) > 0
        # Decoding each <|eot|>-separated document gives the source text back exactly.
        cuts = np.flatnonzero(stream == tiny_tokenizer.eot_id)
        decoded = [tiny_tokenizer.decode(part) for part in np.split(stream, cuts + 1)[:-1]]
        assert decoded == texts

    oasst = make_source("oasst1", settings)
    build_source(settings, oasst, tiny_tokenizer)
    reader = SFTReader.open(settings.data.cache_dir, "oasst1", "train", tiny_tokenizer)
    convs = list(oasst.iter_split("train"))
    assert reader.num_examples == len(convs) > 100
    for i in (0, reader.num_examples // 2, reader.num_examples - 1):
        ids, labels = reader.example(i)
        want = render(tiny_tokenizer, convs[i].messages)[0][-settings.data.sft_max_tokens :]
        assert ids.tolist() == want and (labels != IGNORE_INDEX).any()
    caches = [("pretrain", "wikitext"), ("sft", "oasst1")]
    assert all(r.ok for r in validate(settings, tiny_tokenizer, caches=caches, deep=True))


# ---------------------------------------------------------------------------------------------
# Text that is not text (issue 14): the build stops naming where, and leaves nothing behind.


def _ngpt(*args) -> int:
    from ngpt.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.name.startswith("."))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_lone_surrogate_mid_build_names_file_and_line_and_leaves_no_cache(tmp_path, tiny_tokenizer, tiny_tokenizer_path, workers):
    from fixtures import dolly_rows

    from ngpt.sources import make_source
    from ngpt.sources.base import SourceDataError

    rows = dolly_rows(n=3000)  # ~400 KB: chunks are tokenized and shards written before the bad line is read
    rows[2500]["response"] = "a reply with \ud800 in it"
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # the escape \ud800
    settings = make_settings(tmp_path, tiny_tokenizer_path, workers=workers, sources={"dolly15k": str(path)})
    written = []
    with pytest.raises(SourceDataError, match=rf"{path}:2501 \(row 2500\), column 'response', holds a lone UTF-16 surrogate U\+D800"):
        build_source(settings, make_source("dolly15k", settings), tiny_tokenizer, progress=lambda n, tokens: written.append(tokens))
    if workers == 1:  # in order, in this process: chunks before the bad line were tokenized and written first
        assert written and written[-1] > 0  # (with a pool, how far it got before the reader stops depends on timing)
    assert _leftovers(tmp_path / "cache") == []  # no cache, no temp folder

    # The same through the command, as a user meets it: one panel naming the file and line, exit 1.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"cache_dir": str(tmp_path / "cache"), "shard_bytes": 1024, "workers": workers,
                                           "mix_sft": {"dolly15k": 1.0}},
                                  "tokenizer": {"model_path": str(tiny_tokenizer_path)}}))
    assert _ngpt("cache", "build", "dolly15k", "--config", config, "--source", f"dolly15k={path}") == 1
    assert _leftovers(tmp_path / "cache") == []


def test_cache_build_cli_names_the_primer_line_with_a_surrogate(tmp_path, tiny_tokenizer_path, capsys):
    records = [{"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a"}]} for i in range(5)]
    records[3]["messages"][0]["content"] = "q \udc00"
    path = tmp_path / "primer.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"cache_dir": str(tmp_path / "cache"), "workers": 1, "mix_sft": {"primer": 1.0}},
                                  "tokenizer": {"model_path": str(tiny_tokenizer_path)}}))
    assert _ngpt("cache", "build", "primer", "--config", config, "--source", f"primer={path}") == 1
    def flat(text: str) -> str:  # the panel wraps long lines: compare without whitespace and box lines
        return "".join(text.replace("│", " ").split())

    err = capsys.readouterr().err
    assert flat(f"{path}:4: message 0 content holds a lone UTF-16 surrogate U+DC00") in flat(err)
    assert "Traceback" not in err
    if (tmp_path / "cache").exists():
        assert _leftovers(tmp_path / "cache") == []


def test_unencodable_text_from_any_source_names_the_document(tmp_path, tiny_tokenizer, tiny_tokenizer_path):
    """The last net, for a reader that cannot see it (a source yielding a lone surrogate): the tokenizer step."""
    from ngpt.tokenizer import UnencodableText

    settings = make_settings(tmp_path, tiny_tokenizer_path, workers=2)  # raised in a pool process, named here
    bad = docs(40) + [Document("notes/odd.md", "text then \udcff then more")]
    with pytest.raises(UnencodableText, match=r"Source 'roam', document notes/odd.md holds byte 0xFF, which is not valid UTF-8, at character 10"):
        build_source(settings, ListSource("roam", "pretrain", {"train": bad, "val": docs(2)}), tiny_tokenizer)
    conv = Conversation("row 9", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok \ud801"}])
    with pytest.raises(UnencodableText, match=r"Source 'oasst1', row 9 \(message 1, assistant\) holds a lone UTF-16 surrogate U\+D801"):
        build_source(settings, ListSource("oasst1", "sft", {"train": [conv], "val": [conv]}), tiny_tokenizer)
    assert _leftovers(tmp_path / "cache") == []
