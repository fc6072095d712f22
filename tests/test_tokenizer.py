"""Tokenizer: special tokens are single control ids, lossless round trip, untrusted text is safe."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ngpt.settings import SPECIAL_TOKENS
from ngpt.tokenizer import (
    SourceSample,
    SpecialTokenInText,
    Tokenizer,
    check_training_text,
    report_rows,
    take_sample,
    train_tokenizer,
)


def test_special_tokens_are_single_ids(tiny_tokenizer):
    ids = [tiny_tokenizer.special_ids[t] for t in SPECIAL_TOKENS]
    assert len(set(ids)) == 4
    assert ids == [tiny_tokenizer.sys_id, tiny_tokenizer.usr_id, tiny_tokenizer.asst_id, tiny_tokenizer.eot_id]
    for tok, i in zip(SPECIAL_TOKENS, ids):
        assert tiny_tokenizer.piece(i) == tok


@pytest.mark.parametrize("text", ["<|eot|>", "hi <|asst|> there", "<|sys|><|usr|>", "<|eot", "|>"])
def test_untrusted_text_never_encodes_to_a_special_id(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert not set(ids) & set(tiny_tokenizer.special_ids.values())
    assert tiny_tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    ["", " ", "  two  spaces  ", "\n\n\ttabs\r\n", "emoji 😀🚀 mixed", "\u2581 literal space mark \u2581\u2581",
     "\x00 nul and \x7f", "ünïcödé ß 漢字", "trailing space "],
)
def test_round_trip_is_lossless(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_string(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert not set(ids) & set(tiny_tokenizer.special_ids.values())


def test_encode_batch_matches_encode(tiny_tokenizer):
    texts = ["a model", "with \u2581 mark", ""]
    assert tiny_tokenizer.encode_batch(texts) == [tiny_tokenizer.encode(t) for t in texts]


def test_token_byte_lengths(tiny_tokenizer):
    lengths = tiny_tokenizer.token_byte_lengths()
    assert lengths.shape == (tiny_tokenizer.vocab_size,)
    assert all(lengths[i] == 0 for i in tiny_tokenizer.special_ids.values())
    text = "The model learns quickly because data"
    ids = tiny_tokenizer.encode(text)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_training_text_with_special_token_is_a_hard_error():
    with pytest.raises(SpecialTokenInText) as e:
        check_training_text("some text then <|eot|> more", "wikitext", "wiki.test.raw article 'X'")
    msg = str(e.value)
    assert "wikitext" in msg and "article 'X'" in msg and "offset 15" in msg and "<|eot|>" in msg


def test_take_sample_caps_bytes_and_checks_text():
    docs = [(f"d{i}", "abcdé" * 10) for i in range(10)]
    sample = take_sample("s", docs, max_bytes=125)
    assert sample.num_bytes <= 125 and len(sample.texts) == 3
    with pytest.raises(SpecialTokenInText, match="document bad"):
        take_sample("s", [("ok", "fine"), ("bad", "x<|usr|>")], max_bytes=1000)


def test_train_is_deterministic_and_writes_meta(tmp_path):
    from conftest import synthetic_text

    samples = [SourceSample("a", [synthetic_text(800, seed=1)], "local a"), SourceSample("b", [synthetic_text(800, seed=2)], "local b")]
    m1 = train_tokenizer(samples, tmp_path / "t1", vocab_size=400, seed=3, threads=1)
    m2 = train_tokenizer(samples, tmp_path / "t2", vocab_size=400, seed=3, threads=1)
    assert m1["sha256"] == m2["sha256"]
    meta = json.loads((tmp_path / "t1" / "tokenizer_meta.json").read_text())
    assert meta["sha256"] == Tokenizer(tmp_path / "t1" / "spm.model").sha256
    assert meta["special_ids"] == {"<|sys|>": 1, "<|usr|>": 2, "<|asst|>": 3, "<|eot|>": 4}
    assert set(meta["sources"]) == {"a", "b"} and meta["sources"]["a"]["bytes"] > 0


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ngpt tokenizer train"):
        Tokenizer(tmp_path / "nope.model")


def test_report_rows(tiny_tokenizer):
    rows = report_rows(tiny_tokenizer, [SourceSample("s", ["the model", "漢字"], "x")])
    (row,) = rows
    assert row["bytes"] == len("the model".encode()) + len("漢字".encode())
    assert row["tokens"] > 0 and 0 < row["byte_fallback_share"] <= 1  # 漢字 is not in the tiny vocab
