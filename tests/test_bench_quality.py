"""Tests for `ngpt bench quality` (ngpt/bench/quality.py, ngpt/cli/bench.py): fp32 vs other decode precisions.

    pytest tests/test_bench_quality.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ngpt.bench.quality import QualityPlan, read_prompts, run_quality
from ngpt.cli.main import app
from ngpt.model import GPT
from ngpt.settings import ModelSettings
from ngpt.checkpoint import CHECKPOINT_VERSION, save_checkpoint

QUESTIONS = ["What is ngpt?", "How do I train?", "Name a colour."]


@pytest.fixture(scope="module")
def files(tiny_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    cfg = ModelSettings(vocab_size=tiny_tokenizer.vocab_size, seq_len=64, n_embd=32, n_layer=2, n_head=4)
    ckpt = root / "ckpt.pt"
    save_checkpoint(ckpt, {
        "version": CHECKPOINT_VERSION, "phase": "sft", "step": 1, "model": GPT(cfg).state_dict(),
        "model_config": cfg.model_dump(mode="json"), "tokenizer_model": tiny_tokenizer.proto,
        "tokenizer_sha256": tiny_tokenizer.sha256,
    })
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]}) + "\n"
        for q in QUESTIONS
    ))
    return ckpt, prompts


def test_reads_the_first_user_message_of_each_conversation(files):
    assert read_prompts(files[1], 2) == QUESTIONS[:2]


def test_cli_compares_each_precision_with_fp32(files):
    ckpt, prompts = files
    result = CliRunner().invoke(app, ["bench", "quality", "--ckpt", str(ckpt), "--prompts", str(prompts),
                                      "--n", "3", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["precision"] for r in record["rows"]] == ["bf16", "int8"]
    for r in record["rows"]:
        assert r["prompts"] == 3 and 3 <= r["reply_tokens"] <= 18
        assert r["mean_kl"] > 0  # rounding the weights changes the distribution a little, never not at all
        assert 0 <= r["top1_agreement"] <= 1 and 0 <= r["identical_replies"] <= 3


def test_the_reference_against_itself_differs_by_nothing(files, monkeypatch):
    """Comparing fp32 with fp32 (allowed only here) must give KL 0, full agreement, identical replies."""
    ckpt, prompts = files
    monkeypatch.setattr("ngpt.bench.quality.prepare_for_decoding", lambda model, precision: model)
    (row,) = run_quality(QualityPlan(ckpt, prompts, ("fp32-copy",), n_prompts=3, max_new_tokens=6))
    assert row.mean_kl == pytest.approx(0, abs=1e-9) and row.top1_agreement == 1 and row.identical_replies == 3


def test_bad_flags_are_clear(files):
    ckpt, prompts = files
    result = CliRunner().invoke(app, ["bench", "quality", "--ckpt", str(ckpt), "--precision", "fp32"])
    assert result.exit_code == 2 and "other than fp32" in result.output
    result = CliRunner().invoke(app, ["bench", "quality", "--ckpt", str(ckpt), "--prompts", str(prompts.parent / "nope.jsonl")])
    assert isinstance(result.exception, FileNotFoundError) and "nope.jsonl does not exist" in str(result.exception)
