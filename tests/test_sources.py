"""Data sources: local copies in each hub's schema, split carving, errors, and the hub when offline.

    pytest tests/test_sources.py
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from fixtures import (
    GUTENBERG_FIRST_BODY_LINE,
    GUTENBERG_HEADER_MARK,
    OASST_BEST_THREAD,
    OASST_DE_TEXT,
    OASST_NEVER,
    OASST_TIE_ANSWER,
    WIKITEXT_TITLES,
    dolly_rows,
    oasst_rows,
    write_all_sources,
    write_dolly_jsonl,
    write_fineweb_parquet,
    write_wikitext_jsonl,
    write_wikitext_raw_dir,
)

from ngpt.settings import ALL_SOURCES, load_settings
from ngpt.sources import SOURCES, iter_texts, make_source
from ngpt.sources.base import SPLITS, Conversation, Document, Source, SourceDataError, SourceUnavailable, only, split_of
from ngpt.sources.gutenberg import MAX_CHUNK_CHARS, chunk_text, strip_gutenberg
from ngpt.sources import tables
from ngpt.sources.tables import carve_tagged, table_rows
from ngpt.sources.wikitext import TOP_HEADING

HUB_SOURCES = ("wikitext", "fineweb_edu", "gutenberg", "dolly15k", "oasst1")


def settings_for(**data):
    """Settings from defaults + `data` overrides only (the caller's NGPT_* environment is ignored)."""
    sources = {k: str(v) for k, v in data.pop("sources", {}).items()}
    return load_settings(overrides={"data": {"sources": sources, **data}}, environ={})


def both_splits(src):
    return {split: list(src.iter_split(split)) for split in ("train", "val")}


def refs(items):
    return [item.ref for item in items]


def assert_good_thread(messages):
    roles = [m["role"] for m in messages if m["role"] != "system"]
    assert roles and roles[0] == "user" and roles[-1] == "assistant", roles
    assert all(a != b for a, b in zip(roles, roles[1:])), f"roles do not alternate: {roles}"
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)


@pytest.fixture(scope="module")
def fixture_paths(tmp_path_factory):
    return write_all_sources(tmp_path_factory.mktemp("sources"))


# ---------------------------------------------------------------- registry


def test_registry_is_every_source_and_rejects_unknown_names():
    assert tuple(SOURCES) == ALL_SOURCES
    with pytest.raises(ValueError, match=r"Unknown source 'wiki'.*wikitext, fineweb_edu, gutenberg, roam, dolly15k, oasst1, primer"):
        make_source("wiki", settings_for())


# ---------------------------------------------------------------- every source on the tiny fixtures


@pytest.mark.parametrize("name", [n for n in ALL_SOURCES if n != "fineweb_edu"])
def test_local_fixture_gives_disjoint_deterministic_nonempty_splits(fixture_paths, name):
    src = make_source(name, settings_for(sources={name: fixture_paths[name]}))
    src.check()
    assert src.origin == f"local {fixture_paths[name]}"
    first, again = both_splits(src), both_splits(src)
    assert first["train"] and first["val"], {k: len(v) for k, v in first.items()}
    assert refs(first["train"]) == refs(again["train"]) and refs(first["val"]) == refs(again["val"])
    assert not set(refs(first["train"])) & set(refs(first["val"]))
    expected = Document if src.kind == "pretrain" else Conversation
    for item in first["train"] + first["val"]:
        assert isinstance(item, expected)
        if expected is Conversation:
            assert_good_thread(item.messages)
        else:
            assert item.text.strip()
    texts = list(iter_texts(src, "val"))
    assert [r for r, _ in texts] == refs(first["val"]) and all(t.strip() for _, t in texts)


# Where each source reads a file: (module, function); the first argument names the file.
READERS = {
    "wikitext": ("ngpt.sources.wikitext", "file_rows"),
    "gutenberg": ("ngpt.sources.gutenberg", "read_text"),
    "roam": ("ngpt.sources.roam", "read_text"),
    "dolly15k": ("ngpt.sources.dolly15k", "table_rows"),
    "oasst1": ("ngpt.sources.oasst1", "table_rows"),
    "primer": ("ngpt.sources.primer", "read_chat_jsonl"),
}


def count_reads(monkeypatch, name) -> list[str]:
    """The files `name` opens from now on, one entry per read, in order."""
    module, attr = READERS[name]
    real = getattr(importlib.import_module(module), attr)
    reads: list[str] = []

    def counted(*args, **kwargs):
        reads.append(str(next(a for a in args if isinstance(a, Path))))
        return real(*args, **kwargs)

    monkeypatch.setattr(f"{module}.{attr}", counted)
    return reads


def split_layouts(fixture_paths, tmp_path):
    """(name, path) per source fixture, plus the layouts whose files name their splits."""
    layouts = [(n, fixture_paths[n]) for n in ALL_SOURCES if n != "fineweb_edu"]
    oasst = tmp_path / "oasst-by-split"
    oasst.mkdir()
    for split in ("train", "validation"):
        (oasst / f"oasst1-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in oasst_rows()))
    return layouts + [("wikitext", write_wikitext_raw_dir(tmp_path)), ("oasst1", oasst)]


def test_iter_tagged_gives_iter_split_items_reading_each_file_once(fixture_paths, tmp_path, monkeypatch):
    for name, path in split_layouts(fixture_paths, tmp_path):
        src = make_source(name, settings_for(sources={name: path}))
        splits = both_splits(src)
        reads = count_reads(monkeypatch, name)
        tagged = list(src.iter_tagged())
        assert {split: [item for side, item in tagged if side == split] for split in SPLITS} == splits, (name, path)
        assert splits["train"] and splits["val"]
        assert reads and sorted(reads) == sorted(set(reads)), f"{name} at {path} read a file twice: {reads}"
        monkeypatch.undo()


def test_iter_tagged_default_is_train_then_val():
    class TwoLists(Source):
        name, kind, origin = "wikitext", "pretrain", "test"

        def check(self):
            pass

        def iter_split(self, split):
            return iter([Document(f"{split}{i}", "text") for i in range(2)])

    assert [(s, d.ref) for s, d in TwoLists().iter_tagged()] == [
        ("train", "train0"), ("train", "train1"), ("val", "val0"), ("val", "val1")]


def test_fineweb_streams_rows_with_ids_and_budgets(fixture_paths, tmp_path):
    s = settings_for(sources={"fineweb_edu": fixture_paths["fineweb_edu"]}, fineweb_val_tokens=1000, fineweb_train_tokens=5000)
    src = make_source("fineweb_edu", s)
    src.check()
    assert src.streamed and src.token_budgets() == {"val": 1000, "train": 5000}
    docs = list(src.iter_stream())
    assert [d.ref for d in docs] == [f"<urn:uuid:0000-{i:04d}>" for i in range(8)]
    assert [r for r, _ in iter_texts(src)] == [d.ref for d in docs]
    with pytest.raises(NotImplementedError):
        next(src.iter_split("train"))
    with pytest.raises(NotImplementedError):
        next(src.iter_tagged())
    # Same rows as parquet (the hub's own format) give the same documents.
    pq_src = make_source("fineweb_edu", settings_for(sources={"fineweb_edu": write_fineweb_parquet(tmp_path)}))
    pq_src.check()
    assert list(pq_src.iter_stream()) == docs


def test_iter_texts_joins_conversation_contents(fixture_paths):
    src = make_source("primer", settings_for(sources={"primer": fixture_paths["primer"]}))
    convs = list(src.iter_split("train"))
    texts = dict(iter_texts(src))
    for conv in convs:
        assert texts[conv.ref] == "\n".join(m["content"] for m in conv.messages)


# ---------------------------------------------------------------- wikitext


def test_wikitext_articles_start_at_top_level_headings(fixture_paths, tmp_path):
    src = make_source("wikitext", settings_for(sources={"wikitext": fixture_paths["wikitext"]}))
    docs = sum(both_splits(src).values(), [])
    titles = sorted(TOP_HEADING.match(d.text.split("\n", 1)[0])[1] for d in docs)
    assert titles == sorted(WIKITEXT_TITLES)  # sub-headings never start an article
    for d in docs:
        assert d.text.startswith(" = ") and not d.text.startswith(" = = ")
        assert " = = Career = = " in d.text and "\n\n" in d.text  # blank rows come back as blank lines
        assert d.ref.startswith(f"{fixture_paths['wikitext']} article '")
    # jsonl holding the same rows gives the same articles.
    jsonl = make_source("wikitext", settings_for(sources={"wikitext": write_wikitext_jsonl(tmp_path)}))
    assert [d.text for d in sum(both_splits(jsonl).values(), [])] == [d.text for d in docs]


def test_wikitext_raw_files_named_by_split(tmp_path):
    root = write_wikitext_raw_dir(tmp_path)
    src = make_source("wikitext", settings_for(sources={"wikitext": root}))
    src.check()
    splits = both_splits(src)
    assert {d.ref.split(" article ")[0] for d in splits["train"]} == {str(root / "wiki.train.raw")}
    assert {d.ref.split(" article ")[0] for d in splits["val"]} == {str(root / "wiki.valid.raw")}
    assert len(splits["train"]) == len(splits["val"]) == len(WIKITEXT_TITLES)
    # The raw file's " \n" blank lines read like the hub's "" rows: same articles as jsonl of those rows.
    same_rows = make_source("wikitext", settings_for(sources={"wikitext": write_wikitext_jsonl(tmp_path)}))
    assert sorted(d.text for d in splits["train"]) == sorted(d.text for d in sum(both_splits(same_rows).values(), []))
    (root / "notes.txt").write_text("stray\n", encoding="utf-8")
    with pytest.raises(SourceDataError, match="notes.txt"):
        src.check()


# ---------------------------------------------------------------- gutenberg


def test_gutenberg_strips_header_footer_bom_crlf_and_bounds_chunks(fixture_paths):
    root = fixture_paths["gutenberg"]
    docs = sum(both_splits(make_source("gutenberg", settings_for(sources={"gutenberg": root}))).values(), [])
    pg = [d for d in docs if d.ref.startswith(str(root / "pg90001.txt"))]
    assert pg and pg[0].ref.endswith("chunk 0") and pg[0].text.startswith(GUTENBERG_FIRST_BODY_LINE)
    for d in docs:
        assert GUTENBERG_HEADER_MARK not in d.text and "PROJECT GUTENBERG" not in d.text.upper()
        assert "\r" not in d.text and "\ufeff" not in d.text
        assert 0 < len(d.text) <= MAX_CHUNK_CHARS
    assert len([d for d in docs if "90002-0.txt" in d.ref]) >= 3


def test_chunk_text_cuts_at_blank_lines_and_keeps_everything():
    body = "\n\n".join(f"para {i} " + "x" * 30 for i in range(10)) + "\n\n" + "y" * 95
    chunks = chunk_text(body, max_chars=80)
    assert all(len(c) <= 80 for c in chunks)
    assert chunks[0] == f"para 0 {'x' * 30}\n\npara 1 {'x' * 30}"
    assert "".join(chunks).replace("\n", "") == body.replace("\n", "")
    assert strip_gutenberg("\ufeffhead\r\n*** START OF THIS PROJECT GUTENBERG EBOOK A\r\nLONG TITLE ***\r\nbody\r\n"
                           "*** END OF THIS PROJECT GUTENBERG EBOOK A ***\r\nlicense") == "body"
    assert strip_gutenberg("no markers at all\n") == "no markers at all"


def test_gutenberg_rows_in_hub_schema(fixture_paths, tmp_path):
    books = sorted(fixture_paths["gutenberg"].glob("*.txt"))
    path = tmp_path / "en-00000-of-00001.jsonl"
    path.write_text("".join(json.dumps({"id": f.stem, "text": f.read_bytes().decode("utf-8")}) + "\n" for f in books))
    src = make_source("gutenberg", settings_for(sources={"gutenberg": path}))
    src.check()
    from_rows = sum(both_splits(src).values(), [])
    from_txt = sum(both_splits(make_source("gutenberg", settings_for(sources={"gutenberg": fixture_paths["gutenberg"]}))).values(), [])
    assert sorted(d.text for d in from_rows) == sorted(d.text for d in from_txt)
    assert any(d.ref == f"{path} row 0 chunk 0" for d in from_rows)


# ---------------------------------------------------------------- roam


def test_roam_one_document_per_note_and_missing_dir(fixture_paths, tmp_path):
    root = fixture_paths["roam"]
    docs = sum(both_splits(make_source("roam", settings_for(sources={"roam": root}))).values(), [])
    assert sorted(d.ref for d in docs) == sorted(str(p) for p in root.rglob("*.md"))
    # data.roam_dir is used when data.sources.roam is not set.
    via_dir = make_source("roam", settings_for(roam_dir=str(root)))
    assert sorted(refs(sum(both_splits(via_dir).values(), []))) == sorted(refs(docs))
    missing = make_source("roam", settings_for(roam_dir=str(tmp_path / "no-notes")))
    with pytest.raises(SourceDataError, match=r"no-notes.*--roam-dir.*--source roam=PATH"):
        missing.check()


# ---------------------------------------------------------------- dolly15k


@pytest.mark.parametrize("with_category", [True, False])
def test_dolly_rows_become_exchanges_split_by_row_index(tmp_path, with_category):
    path = write_dolly_jsonl(tmp_path, with_category=with_category)
    src = make_source("dolly15k", settings_for(sources={"dolly15k": path}, val_fraction=0.5, seed=3))
    src.check()
    splits = both_splits(src)
    rows = dolly_rows(with_category)
    for split, convs in splits.items():
        for conv in convs:
            i = int(conv.ref.split(" row ")[1].split(" ")[0])
            assert split_of(str(i), 0.5, 3) == split
            user = rows[i]["instruction"] + (f"\n\n{rows[i]['context']}" if rows[i]["context"] else "")
            assert conv.messages == [{"role": "user", "content": user}, {"role": "assistant", "content": rows[i]["response"]}]
            assert conv.ref.endswith(f" row {i}" + (f" ({rows[i]['category']})" if with_category else ""))
    assert sorted(int(c.ref.split(" row ")[1].split(" ")[0]) for c in sum(splits.values(), [])) == list(range(len(rows)))


# ---------------------------------------------------------------- oasst1


def test_oasst_takes_best_ranked_thread_and_honours_lang_and_deleted(fixture_paths):
    path = fixture_paths["oasst1"]
    convs = sum(both_splits(make_source("oasst1", settings_for(sources={"oasst1": path}))).values(), [])
    by_tree = {c.ref.rsplit(" tree ", 1)[1]: c.messages for c in convs}
    assert sorted(by_tree) == ["t-best", "t-plain-0", "t-plain-1", "t-plain-2", "t-plain-3", "t-plain-4", "t-plain-5", "t-tie"]
    assert [m["content"] for m in by_tree["t-best"]] == list(OASST_BEST_THREAD)
    assert [m["role"] for m in by_tree["t-best"]] == ["user", "assistant", "user", "assistant"]
    assert by_tree["t-tie"][-1]["content"] == OASST_TIE_ANSWER
    contents = {m["content"] for msgs in by_tree.values() for m in msgs}
    assert not contents & set(OASST_NEVER) and OASST_DE_TEXT not in contents
    for msgs in by_tree.values():
        assert_good_thread(msgs)

    all_langs = make_source("oasst1", settings_for(sources={"oasst1": path}, oasst_lang="*"))
    trees = {c.ref.rsplit(" tree ", 1)[1] for c in sum(both_splits(all_langs).values(), [])}
    assert trees == set(by_tree) | {"t-de"}


def test_oasst_files_named_train_and_validation_are_the_splits(tmp_path):
    rows = oasst_rows()
    val_trees = {"t-best", "t-plain-0"}
    for name, keep in (("train", lambda r: r["message_tree_id"] not in val_trees), ("validation", lambda r: r["message_tree_id"] in val_trees)):
        (tmp_path / f"oasst1-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))
    src = make_source("oasst1", settings_for(sources={"oasst1": tmp_path}))
    src.check()
    splits = both_splits(src)
    assert {c.ref.rsplit(" tree ", 1)[1] for c in splits["val"]} == val_trees
    assert len(splits["train"]) == 6 and not val_trees & {c.ref.rsplit(" tree ", 1)[1] for c in splits["train"]}


# ---------------------------------------------------------------- primer


def test_primer_check_validates_every_line(tmp_path):
    path = tmp_path / "primer.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + '{"messages": [{"role": "user", "content": "only a user"}]}\n')
    with pytest.raises(SourceDataError, match=rf"{path}:3: needs at least one assistant message"):
        make_source("primer", settings_for(sources={"primer": path})).check()
    with pytest.raises(SourceDataError, match=r"missing\.jsonl does not exist.*ngpt primer generate"):
        make_source("primer", settings_for(sources={"primer": tmp_path / "missing.jsonl"})).check()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ALL_SOURCES)
def test_missing_local_path_names_it(tmp_path, name):
    missing = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(SourceDataError, match=str(missing)):
        make_source(name, settings_for(sources={name: missing})).check()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("wikitext", "text"), ("fineweb_edu", "text"), ("dolly15k", "instruction, context, response"),
     ("oasst1", "message_id, parent_id, text, role, lang, deleted, rank, message_tree_id")],
)
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_wrong_columns_name_file_expected_and_found(tmp_path, name, expected, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": "some text", "title": "x"}]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text(json.dumps(rows[0]) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(SourceDataError) as err:
        make_source(name, settings_for(sources={name: path})).check()
    msg = str(err.value)
    assert str(path) in msg and f"Expected columns: {expected}" in msg and "found: body, title" in msg


def test_broken_jsonl_row_names_the_file(tmp_path):
    path = tmp_path / "dolly.jsonl"
    path.write_text(json.dumps(dolly_rows()[0]) + "\n{not json\n")
    src = make_source("dolly15k", settings_for(sources={"dolly15k": path}))
    src.check()  # the first row is fine; the break is found while reading
    with pytest.raises(SourceDataError, match=rf"cannot read {path} near line 2 \(row 1\)"):
        list(src.iter_split("train"))


def test_local_table_rows_are_the_rows_datasets_gives(tmp_path, monkeypatch):
    """Local files are read without `datasets` (it is slow to import and per row); the rows must not differ."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset

    rows = [{"id": i, "text": f"row {i} " * (1 + i % 7), "rank": None if i % 3 else i / 2, "deleted": i % 4 == 0} for i in range(50)]
    jsonl = tmp_path / "rows.jsonl"
    lines = [json.dumps({k: v for k, v in r.items() if not (k == "rank" and v is None)}) for r in rows]  # keys left out
    jsonl.write_text("\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:]) + "\n", encoding="utf-8")  # blank lines
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=7)
    columns = ("text", "rank", "deleted", "id", "not_there")
    monkeypatch.setattr(tables, "PARQUET_BATCH_BYTES", 200)  # a few rows per batch: batches and row groups cut apart
    for path, builder in ((jsonl, "json"), (parquet, "parquet")):
        expected = [{c: r.get(c) for c in columns} for r in load_dataset(builder, data_files=str(path), split="train", streaming=True)]
        assert list(table_rows("test", path, columns)) == list(enumerate(expected)), path
        assert len(expected) == 50 and expected[1]["rank"] is None and expected[3]["rank"] == 1.5


@pytest.mark.parametrize("name", HUB_SOURCES)
def test_offline_hub_is_unavailable_with_a_fix(name):
    src = make_source(name, settings_for())
    assert src.origin.startswith("hub ")
    with pytest.raises(SourceUnavailable, match=rf"Source '{name}'.*--source {name}=PATH"):
        src.check()


def test_hub_origin_names_repo_and_config():
    assert make_source("wikitext", settings_for()).origin == "hub Salesforce/wikitext (wikitext-103-raw-v1)"
    assert make_source("dolly15k", settings_for()).origin == "hub databricks/databricks-dolly-15k"


# ---------------------------------------------------------------- carving


def test_carve_is_deterministic_disjoint_and_never_leaves_a_split_empty():
    items = [(f"key-{i}", i) for i in range(40)]
    tagged = list(carve_tagged(items, 0.25, 7))  # one pass, both splits, input order kept
    assert [i for _, i in tagged] == list(range(40)) and tagged == list(carve_tagged(items, 0.25, 7))
    assert [i for s, i in tagged if s == "val"] == [i for k, i in items if split_of(k, 0.25, 7) == "val"]
    assert 0 < len(list(only(tagged, "val"))) < 40
    for fraction in (1e-9, 1 - 1e-9):  # every key hashes to one side: the last item moves over
        for n in (2, 3):
            sides = [s for s, _ in carve_tagged(items[:n], fraction, 0)]
            assert sorted(set(sides)) == ["train", "val"] and sides[-1] != sides[0]
    assert list(carve_tagged(items[:1], 1e-9, 0)) == [("train", 0)]
    assert [s for s, _ in carve_tagged(items[:2], 1e-9, 0)] == ["train", "val"]


# ---------------------------------------------------------------- the real public samples (../shared/data)


@pytest.mark.parametrize("fmt", ["test-00000-of-00001.parquet", "test.jsonl"])
def test_shared_wikitext_test_split(shared_data, fmt):
    path = shared_data / "wikitext-2-raw-v1" / fmt
    src = make_source("wikitext", settings_for(sources={"wikitext": path}))
    src.check()
    splits = both_splits(src)
    assert splits["train"] and splits["val"] and not set(refs(splits["train"])) & set(refs(splits["val"]))
    docs = splits["train"] + splits["val"]
    assert len(docs) > 50 and any("Robert Boulter" in d.ref for d in docs)
    assert all(TOP_HEADING.match(d.text.split("\n", 1)[0]) for d in docs)


def test_shared_gutenberg_books(shared_data):
    root = shared_data / "gutenberg"
    src = make_source("gutenberg", settings_for(sources={"gutenberg": root}))
    src.check()
    splits = both_splits(src)
    assert splits["train"] and splits["val"]
    moby = [d for d in splits["train"] + splits["val"] if "pg2701.txt" in d.ref]
    first = min(moby, key=lambda d: int(d.ref.rsplit(" chunk ", 1)[1]))
    assert first.text.startswith("MOBY-DICK;")
    last = max(moby, key=lambda d: int(d.ref.rsplit(" chunk ", 1)[1]))
    assert last.text.endswith("only found another orphan.")
    boilerplate = ("*** START OF", "*** END OF", "This ebook is for the use of anyone", "FULL PROJECT GUTENBERG LICENSE", "\ufeff")
    assert not any(b in d.text for b in boilerplate for d in moby)
    assert all(len(d.text) <= MAX_CHUNK_CHARS for d in splits["train"] + splits["val"])
    assert {d.ref.split(" chunk ")[0] for d in splits["val"]} <= {str(p) for p in root.glob("*.txt")}


def test_shared_dolly_without_category(shared_data):
    path = shared_data / "databricks-dolly-15k"
    src = make_source("dolly15k", settings_for(sources={"dolly15k": path}))
    src.check()
    n_train = sum(1 for _ in src.iter_split("train"))
    val = list(src.iter_split("val"))
    assert n_train + len(val) == 15015 and 0.03 < len(val) / 15015 < 0.07
    assert val[0].messages[0]["role"] == "user" and val[0].messages[1]["role"] == "assistant"


def test_shared_oasst1_threads(shared_data):
    path = shared_data / "oasst1" / "oasst1-validation-en.messages.jsonl"
    src = make_source("oasst1", settings_for(sources={"oasst1": path}))
    src.check()
    splits = both_splits(src)
    convs = splits["train"] + splits["val"]
    assert splits["val"] and 100 < len(convs) <= 155
    for conv in convs:
        assert_good_thread(conv.messages)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_id = {r["message_id"]: r for r in rows}
    for conv in convs:  # each reply taken is the best-ranked among its live siblings
        tree = conv.ref.rsplit(" tree ", 1)[1]
        node = by_id[tree]
        for msg in conv.messages[1:]:
            siblings = [r for r in rows if r["parent_id"] == node["message_id"] and not r["deleted"]
                        and r["role"] != node["role"]]
            best = min(siblings, key=lambda r: (r["rank"] is None, r["rank"] or 0, r["message_id"]))
            assert msg["content"] == best["text"]
            node = best


# ---------------------------------------------------------------- text that is not text (issue 14)


def _jsonl(path: Path, rows: list) -> Path:
    """JSON Lines as json.dumps writes them by default: a lone surrogate becomes the escape \\ud800."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _with_bad_text(rows: list[dict], k: int, column: str) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[k][column] = "fine until here \ud800 and after"
    return rows


def _read_all(name: str, path: Path) -> None:
    src = make_source(name, settings_for(sources={name: path}))
    src.check()
    for _ in src.iter_tagged():
        pass


@pytest.mark.parametrize("name", ["dolly15k", "oasst1"])
def test_a_lone_surrogate_in_a_table_row_names_file_line_and_column(tmp_path, name):
    rows, column = (dolly_rows(), "response") if name == "dolly15k" else (oasst_rows(), "text")
    path = _jsonl(tmp_path / f"{name}.jsonl", _with_bad_text(rows, 3, column))
    assert "\\ud800" in path.read_text().splitlines()[3]
    with pytest.raises(SourceDataError) as err:
        _read_all(name, path)
    msg = str(err.value)
    assert f"{path}:4 (row 3), column '{column}'" in msg and "lone UTF-16 surrogate U+D800 at character 16" in msg
    assert msg.isascii()  # printable on any terminal: the bad character itself is not in the message


def test_a_lone_surrogate_in_the_primer_names_file_line_and_message(tmp_path):
    records = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 2
    records.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bad \udfff"}]})
    path = _jsonl(tmp_path / "primer.jsonl", records)
    with pytest.raises(SourceDataError, match=rf"{path}:3: message 1 content holds a lone UTF-16 surrogate U\+DFFF at character 4"):
        make_source("primer", settings_for(sources={"primer": path})).check()  # found before anything is written


@pytest.mark.parametrize("name", ["dolly15k", "primer"])
def test_invalid_utf8_names_the_exact_line_even_far_into_the_file(tmp_path, name):
    """The reader decodes ahead in blocks; the error still names the line the bad byte is on."""
    if name == "dolly15k":
        lines = [json.dumps(r) for r in dolly_rows(n=200)]  # tens of KB: the bad line is blocks away
    else:
        lines = [json.dumps(r) for r in [{"messages": [{"role": "user", "content": f"q {i} " * 20},
                                                        {"role": "assistant", "content": "a"}]} for i in range(200)]]
    data = "\n".join(lines).encode("utf-8").split(b"\n")
    data[150] = data[150].replace(b"Answer", b"Ans\xffwer").replace(b"q 150", b"q \xff150")
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(data) + b"\n")
    with pytest.raises(SourceDataError, match=rf"{path}:151\b.*not valid UTF-8"):
        _read_all(name, path)


@pytest.mark.parametrize("line", ["[" * 5000 + "]" * 5000, '{"instruction": "x", "response": ' + "9" * 5000 + "}"],
                         ids=["nested 5000 deep", "a 5000-digit number"])
def test_unreadable_json_lines_are_an_error_naming_the_line_not_a_traceback(tmp_path, line):
    path = tmp_path / "dolly.jsonl"
    path.write_text(json.dumps(dolly_rows()[0]) + "\n" + line + "\n")
    with pytest.raises(SourceDataError, match=rf"cannot read {path} near line 2 \(row 1\)"):
        _read_all("dolly15k", path)
    primer = tmp_path / "primer.jsonl"
    primer.write_text(line + "\n")
    with pytest.raises(SourceDataError, match=rf"{primer}:1: not"):
        make_source("primer", settings_for(sources={"primer": primer})).check()


def test_roam_note_that_is_not_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "good.md").write_text("# fine\n", encoding="utf-8")
    (tmp_path / "bad.md").write_bytes(b"# title\nline two\nline \xe9three\n")  # Latin-1, not UTF-8
    with pytest.raises(SourceDataError, match=rf"{tmp_path / 'bad.md'}:3 is not valid UTF-8 .*0xE9"):
        _read_all("roam", tmp_path)
