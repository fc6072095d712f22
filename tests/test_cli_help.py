"""Flags that set a settings field take their --help from the field's description (settings.py), once.

    pytest tests/test_cli_help.py
"""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from ngpt.cli.main import app
from ngpt.settings import Settings

# flag → the settings field it sets, per command
SETTINGS_FLAGS = {
    ("train", "pretrain"): {"--device": "pretrain.device", "--total-steps": "pretrain.total_steps",
                            "--max-time": "pretrain.max_time", "--max-tokens": "pretrain.max_tokens",
                            "--amp": "pretrain.amp", "--micro-b": "pretrain.micro_batch",
                            "--accum-steps": "pretrain.accum_steps"},
    ("cache", "build-all"): {"--roam-dir": "data.roam_dir", "--fineweb-train-tokens": "data.fineweb_train_tokens",
                             "--fineweb-val-tokens": "data.fineweb_val_tokens", "--shard-bytes": "data.shard_bytes",
                             "--workers": "data.workers", "--seed": "data.seed"},
    ("tokenizer", "train"): {"--vocab-size": "tokenizer.vocab_size", "--sample-bytes": "tokenizer.sample_bytes",
                             "--seed": "tokenizer.seed"},
    ("chat",): {"--max-new-tokens": "generation.max_new_tokens", "--temperature": "generation.temperature",
                "--top-k": "generation.top_k", "--top-p": "generation.top_p",
                "--repetition-penalty": "generation.repetition_penalty", "--seed": "generation.seed"},
}


def description(dotted: str) -> str:
    model = Settings
    *sections, name = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name].description


def test_settings_flags_take_their_help_from_the_settings_descriptions():
    group = typer.main.get_command(app)
    for path, flags in SETTINGS_FLAGS.items():
        command = group
        for name in path:
            command = command.commands[name]
        helps = {opt: p.help for p in command.params for opt in p.opts}
        for flag, dotted in flags.items():
            assert description(dotted) in helps[flag], (path, flag)


def test_train_pretrain_help_shows_the_descriptions():
    result = CliRunner().invoke(app, ["train", "pretrain", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # Rich wraps and pads the help table
    for dotted in SETTINGS_FLAGS[("train", "pretrain")].values():
        assert description(dotted) in text
