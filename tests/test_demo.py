"""`ngpt demo` end to end (the acceptance run), and loading its checkpoint for inference."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ngpt.checkpoint import CheckpointError, load_for_inference
from ngpt.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_offline_and_learns(tmp_path, monkeypatch, capsys):
    from ngpt.cli.main import main

    # A fresh-clone layout: the shipped data/ and configs/ only.
    for d in ("data", "configs"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("cache", ".*"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["demo", "--prompt", "What is ngpt?"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "ngpt:" in out
    work = tmp_path / "artifacts" / "demo"
    pre = [r for r in read_metrics(work / "runs" / "demo-pretrain" / "metrics.jsonl") if "val_pretrain_loss" in r]
    assert pre[0]["step"] == 0
    assert pre[-1]["val_pretrain_loss"] < 0.5 * pre[0]["val_pretrain_loss"]  # far below its start
    sft = [r for r in read_metrics(work / "runs" / "demo-sft" / "metrics.jsonl") if "val_sft_loss" in r]
    assert sft[-1]["val_sft_loss"] < sft[0]["val_sft_loss"]

    model, tok, state = load_for_inference(work / "checkpoints")  # a folder with best.pt
    assert state["phase"] == "sft" and tok.sha256 == state["tokenizer_sha256"]
    assert not model.training


def test_load_for_inference_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_for_inference(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no best.pt or latest.pt"):
        load_for_inference(tmp_path)
