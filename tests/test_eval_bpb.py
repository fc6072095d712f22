"""`ngpt eval bpb`: bits per byte over whole texts and cache splits, equal to training's val_bpb on the same tokens.

    pytest tests/test_eval_bpb.py
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from conftest import synthetic_text
from fixtures import ngpt_cli, write_all_sources
from test_eval_data import one_thread, tiny_checkpoint  # noqa: F401  (one_thread is an autouse fixture)
from ngpt.batches import Batch
from ngpt.checkpoint import load_for_inference
from ngpt.eval.bpb import windows
from ngpt.eval.text import text_stream
from ngpt.tokenizer import SourceSample, Tokenizer, train_tokenizer
from ngpt.train.evaluate import eval_losses


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_tokenizer) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bpb") / "best.pt", tiny_tokenizer, seq_len=32, std=0.1)


def gutenberg_cache(tmp_path: Path, tokenizer_path: Path) -> tuple[dict, Path]:
    """The fixture sources and a config whose gutenberg pretrain cache is built with `tokenizer_path`."""
    src = write_all_sources(tmp_path / "src")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": {"cache_dir": str(tmp_path / "cache"), "workers": 1, "mix_pretrain": {"gutenberg": 1.0},
                                           "val_pretrain_source": "gutenberg"},
                                  "tokenizer": {"model_path": str(tokenizer_path)}}))
    assert ngpt_cli("cache", "build", "gutenberg", "-c", config, "--source", f"gutenberg={src['gutenberg']}") == 0
    return src, config


def test_bpb_of_a_text_equals_the_training_loops_val_bpb_on_the_same_tokens(ckpt, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text(synthetic_text(40, seed=3) + "\ncafé, naïve — 日本語 🙂\n", encoding="utf-8")
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "--text", text) == 0
    got = last_json(capsys.readouterr().out)

    model, tok, _ = load_for_inference(ckpt)
    ids, _ = text_stream(tok, [text])
    assert ids[-1] == tok.eot_id and got["tokens"] == len(ids) - 1  # every target once, the closing <|eot|> too
    spans = windows(len(ids), model.cfg.seq_len)
    batches = iter([Batch(ids[s : e - 1][None], ids[s + 1 : e][None]) for s, e, _ in spans])  # training's (x, y)
    loss, bpb = eval_losses(model, lambda: next(batches), len(spans), torch.device("cpu"), nullcontext,
                            torch.from_numpy(tok.token_byte_lengths()))
    assert got["bpb"] == pytest.approx(bpb, rel=1e-6) and got["loss"] == pytest.approx(loss, rel=1e-6)
    first = int(tok.token_byte_lengths()[ids[0]])  # the first token is context, never a target
    assert got["bytes"] == len(text.read_bytes()) - first  # and <|eot|> has no bytes
    record = json.loads((ckpt.parent / "eval.json").read_text())
    assert record["bpb"]["bpb"] == got["bpb"] and record["checkpoint"] == str(ckpt)


def test_sliding_windows_score_each_target_once_with_more_context(ckpt, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(synthetic_text(30, seed=5))
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "--text", text) == 0
    plain = last_json(capsys.readouterr().out)
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "--text", text, "--stride", "8") == 0
    slid = last_json(capsys.readouterr().out)
    assert slid["tokens"] == plain["tokens"] and slid["windows"] > plain["windows"] and slid["stride"] == 8
    assert slid["bpb"] != plain["bpb"]


def test_a_folder_is_every_file_in_it_and_a_cache_split_reads_as_training_does(ckpt, tmp_path, tiny_tokenizer_path, capsys):
    src, config = gutenberg_cache(tmp_path, tiny_tokenizer_path)
    capsys.readouterr()
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "-c", config, "--cache", "gutenberg", "--split", "train") == 0
    cached = last_json(capsys.readouterr().out)
    assert cached["documents"] > 0 and cached["source"].endswith("gutenberg/train")
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "--text", src["gutenberg"]) == 0
    folder = last_json(capsys.readouterr().out)
    assert folder["documents"] == 3  # the three books (files), each one document


def test_bad_text_and_a_cache_of_another_tokenizer_are_clear_errors(ckpt, tmp_path, tiny_tokenizer_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"first line\ncaf\xe9\n")
    assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, "--text", bad) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2" in err.replace("\n", "") or "latin1.txt:2" in err.replace("\n", "")
    assert "Traceback" not in err

    other_dir = tmp_path / "tok2"
    train_tokenizer([SourceSample("s", [synthetic_text(400, seed=9)], "t")], other_dir, vocab_size=400, seed=1, threads=1)
    other = tiny_checkpoint(tmp_path / "other" / "best.pt", Tokenizer(other_dir / "spm.model"), seq_len=32)
    _, config = gutenberg_cache(tmp_path, tiny_tokenizer_path)
    capsys.readouterr()
    assert ngpt_cli("eval", "bpb", "--ckpt", other, "-c", config, "--cache", "gutenberg") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "tokenizer" in err and "rebuild" in err and "Traceback" not in err
    for args in (["--cache", "dolly15k"], ["--cache", "gutenberg", "--text", str(bad)], ["--text", str(tmp_path / "nope.txt")]):
        assert ngpt_cli("eval", "bpb", "--ckpt", ckpt, *args) == 1
    assert "Traceback" not in capsys.readouterr().err
