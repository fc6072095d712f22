"""`ngpt bench learn`: a budget run scored on the whole val split, and --ablate's table and JSON.

    pytest tests/test_bench_learn.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fixtures import ngpt_cli, write_workspace

TINY_MODEL = {"vocab_size": 384, "seq_len": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}
PHASE = {"micro_batch": 2, "accum_steps": 1, "warmup_steps": 2, "amp": "false", "device": "cpu", "optimizer": "muon"}
BUDGET = ("--max-tokens", "640")  # 10 steps of 2 × 32 tokens: a token budget, so every run is deterministic


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_tokenizer_path) -> Path:
    return write_workspace(tmp_path_factory.mktemp("learn"), tiny_tokenizer_path, TINY_MODEL, PHASE)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_one_run_reports_the_budget_it_trained_and_the_whole_val_split(config, tmp_path, capsys):
    assert ngpt_cli("bench", "learn", "-c", config, *BUDGET, "--out", tmp_path) == 0
    (run,) = last_json(capsys.readouterr().out)["runs"]
    assert run["name"] == "baseline" and run["steps"] == 10 and run["tokens"] == 640
    assert math.isfinite(run["val_bpb"]) and run["val_bpb"] > 0
    assert run["val_tokens"] > TINY_MODEL["seq_len"]  # the whole split, not one eval batch
    assert (tmp_path / "baseline" / "checkpoints").is_dir()


def test_ablate_runs_each_variant_from_the_same_state_and_writes_its_table_and_json(config, tmp_path, capsys):
    # the base already uses Muon: its muon variant must reproduce the baseline exactly (same seed, same
    # budget, a fresh process each); adamw and a null-valued option (softcap off → on) must differ.
    code = ngpt_cli("bench", "learn", "-c", config, *BUDGET, "--out", tmp_path, "--set", "model.logit_softcap=15",
                    "--ablate", "pretrain.optimizer=muon,adamw", "--ablate", "model.logit_softcap=null")
    out = capsys.readouterr().out
    assert code == 0, out
    record = last_json(out)
    runs = {r["name"]: r for r in record["runs"]}
    assert list(runs) == ["baseline", 'pretrain.optimizer="muon"', 'pretrain.optimizer="adamw"', "model.logit_softcap=null"]
    assert runs['pretrain.optimizer="muon"']["val_bpb"] == runs["baseline"]["val_bpb"]
    assert runs['pretrain.optimizer="adamw"']["val_bpb"] != runs["baseline"]["val_bpb"]
    assert runs["model.logit_softcap=null"]["val_bpb"] != runs["baseline"]["val_bpb"]
    assert json.loads((tmp_path / "ablation.json").read_text()) == record
    assert record["settings"]["model"] == {"logit_softcap": 15} and record["settings"]["pretrain"]["max_tokens"] == 640
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert table[0].startswith("| run | val bpb | Δ vs baseline") and len(table) == 2 + 4
    assert "+0.0000" in table[3] or "-0.0000" in table[3]  # the muon row: Δ 0 against the baseline


@pytest.mark.parametrize("flag, message", [
    (("--ablate", "pretrain.optimizer"), "--ablate expects KEY=VALUE"),
    (("--ablate", "pretrain.optimizer=sgd"), "optimizer"),
    (("--ablate", "model.no_such_option=1"), "no_such_option"),
    (("--set", "pretrain.muon_lr=1,2"), "--set takes one value"),
])
def test_bad_ablation_fails_before_any_training(config, tmp_path, capsys, flag, message):
    assert ngpt_cli("bench", "learn", "-c", config, *BUDGET, "--out", tmp_path, *flag) != 0
    captured = capsys.readouterr()
    assert message in captured.out + captured.err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_values_that_are_json_lists_keep_their_commas():
    """A tuple setting (adam_betas) through --set / --ablate: commas inside brackets or quotes split nothing."""
    from ngpt.bench.learn import parse_assignment

    assert parse_assignment("pretrain.adam_betas=[0.9,0.95]", "--set") == ("pretrain.adam_betas", [[0.9, 0.95]])
    assert parse_assignment("pretrain.adam_betas=[0.9,0.95],[0.8,0.95]", "--ablate") == (
        "pretrain.adam_betas", [[0.9, 0.95], [0.8, 0.95]])
    assert parse_assignment('data.mix_pretrain={"wikitext":0.5,"gutenberg":0.5},"a,b"', "--ablate") == (
        "data.mix_pretrain", [{"wikitext": 0.5, "gutenberg": 0.5}, "a,b"])
    assert parse_assignment("pretrain.muon_lr=0.03,0.06", "--ablate") == ("pretrain.muon_lr", [0.03, 0.06])


def test_sft_runs_start_from_the_checkpoint_and_score_every_val_example(config, tmp_path, capsys):
    assert ngpt_cli("bench", "learn", "-c", config, *BUDGET, "--out", tmp_path / "pre") == 0
    pretrained = tmp_path / "pre" / "baseline" / "checkpoints" / "pretrain" / "latest.pt"
    capsys.readouterr()
    code = ngpt_cli("bench", "learn", "-c", config, "--phase", "sft", "--init-from", pretrained, "--max-tokens", "320",
                    "--out", tmp_path / "sft", "--ablate", "sft.optimizer=muon,adamw")
    out = capsys.readouterr().out
    assert code == 0, out
    record = last_json(out)
    assert record["phase"] == "sft" and record["settings"]["sft"]["max_tokens"] == 320
    runs = {r["name"]: r for r in record["runs"]}
    assert runs["baseline"]["steps"] == 5 and math.isfinite(runs["baseline"]["val_bpb"])
    assert runs['sft.optimizer="muon"']["val_bpb"] == runs["baseline"]["val_bpb"]  # the config's own: the same run
    assert runs['sft.optimizer="adamw"']["val_bpb"] != runs["baseline"]["val_bpb"]
    # The score: every labelled token of every val example of the three SFT sources, once.
    from ngpt.bench.learn import sft_val_examples
    from ngpt.settings import IGNORE_INDEX, load_settings
    from ngpt.tokenizer import Tokenizer

    settings = load_settings(config)
    labelled = sum(int((labels[1 : TINY_MODEL["seq_len"] + 1] != IGNORE_INDEX).sum())
                   for _, labels in sft_val_examples(settings, Tokenizer(settings.tokenizer.model_path)))
    assert runs["baseline"]["val_tokens"] == labelled > 0
    assert (tmp_path / "sft" / "baseline" / "checkpoints" / "sft" / "latest.pt").is_file()


def test_sft_without_a_checkpoint_is_refused_before_training(config, tmp_path, capsys):
    assert ngpt_cli("bench", "learn", "-c", config, "--phase", "sft", *BUDGET, "--out", tmp_path) != 0
    captured = capsys.readouterr()
    assert "--init-from" in captured.out + captured.err and not any(tmp_path.iterdir())
