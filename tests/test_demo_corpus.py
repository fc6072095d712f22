"""The demo's pretrain corpus (ngpt/demo_corpus.py): the primer facts rendered as roam markdown notes.

    pytest tests/test_demo_corpus.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ngpt.demo_corpus import MARKER, main, render_notes, title_of, write_notes
from ngpt.primer import load_facts
from ngpt.settings import SPECIAL_TOKENS
from ngpt.tokenizer import find_special

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FACTS = REPO / "data" / "public_facts.json"
HAS_SOURCES = importlib.util.find_spec("ngpt.sources.roam") is not None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """The default corpus from the shipped facts, written once for the module."""
    return write_notes(SHIPPED_FACTS, tmp_path_factory.mktemp("demo") / "notes", seed=0)


def read_all(paths: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


def test_same_seed_same_bytes_other_seed_other_text(corpus, tmp_path):
    again = write_notes(SHIPPED_FACTS, tmp_path / "again", seed=0)
    assert read_all(again) == read_all(corpus)
    other = read_all(write_notes(SHIPPED_FACTS, tmp_path / "other", seed=1))
    assert other.keys() == read_all(corpus).keys()
    assert sum(other[name] != text for name, text in read_all(corpus).items()) > len(corpus) // 2


def test_every_note_is_nonempty_markdown_without_special_tokens(corpus):
    assert len(corpus) == 80 and all(p.suffix == ".md" for p in corpus)
    for path in corpus:
        text = path.read_bytes().decode("utf-8")
        lines = text.splitlines()
        assert lines[0].startswith("# ") and len(lines[0]) > 2, f"{path.name} has no title heading"
        assert text.endswith("\n") and len(text) > 1000, f"{path.name} is nearly empty"
        assert find_special(text) is None, f"{path.name} contains {find_special(text)}"
        assert "<|" not in text and not any(tok in text for tok in SPECIAL_TOKENS)
        assert "[[" in text and ("Q: " in text or "## " in text or "- **" in text or '"' in text)
        assert not [s for s in text.split("`")[1::2] if "[[" in s], f"{path.name}: a link inside `code`"


@pytest.mark.parametrize("n_notes,total_bytes", [(80, 400_000), (40, 300_000), (120, 600_000), (13, 30_000)])
def test_total_size_and_count_follow_the_request(tmp_path, n_notes, total_bytes):
    notes = render_notes(load_facts(SHIPPED_FACTS), seed=0, n_notes=n_notes, total_bytes=total_bytes)
    size = sum(len(t.encode("utf-8")) for t in notes.values())
    assert len(notes) == n_notes
    assert 0.9 * total_bytes <= size <= 1.1 * total_bytes, (size, total_bytes)


def test_every_category_and_every_answer_is_taught(corpus):
    facts = load_facts(SHIPPED_FACTS)
    texts = {p.name: p.read_text(encoding="utf-8") for p in corpus}
    everything = "\n".join(texts.values())
    for category, cat_facts in facts.categories.items():
        own = [t for t in texts.values() if f"#{category}" in t.splitlines()[2]]
        assert own, f"no note for category {category}"
        assert any(t.startswith(f"# {title_of(category)}\n") for t in own)
        assert f"[[{title_of(category)}]]" in everything
        for fact in cat_facts:  # verbatim at least once, in a card, bullet or quote
            assert fact.answer in everything, f"{category}: answer missing: {fact.answer[:60]}"
            for turn in fact.follow_ups:
                assert turn.answer in everything, f"{category}: follow-up answer missing: {turn.answer[:60]}"


def test_notes_are_shared_out_by_number_of_facts(corpus):
    facts = load_facts(SHIPPED_FACTS)
    per_cat = {c: sum(p.name.startswith(c.replace("_", "-") + "-") for p in corpus) for c in facts.categories}
    assert sum(per_cat.values()) == len(corpus)
    most = max(facts.categories, key=lambda c: len(facts.categories[c]))
    fewest = min(facts.categories, key=lambda c: len(facts.categories[c]))
    assert per_cat[most] > per_cat[fewest] >= 1


@pytest.mark.skipif(not HAS_SOURCES, reason="ngpt.sources.roam is not there yet")
def test_notes_load_through_the_roam_source_with_both_splits(corpus):
    from ngpt.settings import load_settings
    from ngpt.sources import make_source

    notes_dir = corpus[0].parent
    settings = load_settings(overrides={"data": {"sources": {"roam": str(notes_dir)}}}, environ={})
    src = make_source("roam", settings)
    src.check()
    splits = {split: list(src.iter_split(split)) for split in ("train", "val")}
    assert splits["train"] and splits["val"]
    loaded = {Path(d.ref).name: d.text for docs in splits.values() for d in docs}
    assert loaded == {p.name: p.read_text(encoding="utf-8") for p in corpus}  # the marker file is not a note


def test_rewrite_replaces_an_old_corpus_and_refuses_other_folders(tmp_path):
    out = tmp_path / "notes"
    first = write_notes(SHIPPED_FACTS, out, n_notes=30, total_bytes=60_000)
    second = write_notes(SHIPPED_FACTS, out, n_notes=20, total_bytes=40_000)
    assert sorted(out.glob("*.md")) == second and len(first) == 30  # no stale notes from the first run
    assert (out / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "notes"]  # no temp folder left behind

    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "diary.md").write_text("# mine\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="my-notes.*not a generated demo corpus"):
        write_notes(SHIPPED_FACTS, mine)
    assert [p.name for p in mine.iterdir()] == ["diary.md"]


def test_too_few_notes_or_bytes_is_an_error_that_says_the_fix(tmp_path):
    facts = load_facts(SHIPPED_FACTS)
    with pytest.raises(ValueError, match=f"fewer than the {len(facts.categories)} categories.*at least {len(facts.categories)}"):
        render_notes(facts, n_notes=len(facts.categories) - 1)
    with pytest.raises(ValueError, match="total_bytes must be positive"):
        render_notes(facts, total_bytes=0)


def test_works_for_any_facts_file_and_from_the_command_line(tmp_path, capsys):
    facts = {
        "version": 1,
        "assistant_name": "Pip",
        "categories": {
            "greetings": [{"question": ["Who are you?"], "answer": "I am {assistant_name}, a tiny helper."}],
            "math_facts": [
                {"question": ["What is 2+2?", "Sum of 2 and 2?"], "answer": "4, as greetings and math facts agree.",
                 "follow_up": [{"question": ["And 3+3?"], "answer": "6."}]},
            ],
        },
    }
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts), encoding="utf-8")
    main(["--facts", str(path), "--out", str(tmp_path / "out"), "--n-notes", "4", "--total-bytes", "8000"])
    assert "wrote 4 notes" in capsys.readouterr().out
    texts = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "out").glob("*.md")}
    assert sorted(texts) == ["greetings-00.md", "greetings-01.md", "math-facts-00.md", "math-facts-01.md"]
    everything = "\n".join(texts.values())
    assert "I am Pip, a tiny helper." in everything and "[[math facts]]" in everything
