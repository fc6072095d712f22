"""The `ngpt` console script: every command group, and the one place errors become readable panels.

    ngpt --help
    python -m ngpt tokenizer train --help
"""

from __future__ import annotations

import sys

import typer

from ngpt.cli import bench, cache, chat, demo, primer, serve, tokenizer, train
from ngpt.cli import eval as eval_cli
from ngpt.cli import export as export_cli
from ngpt.cli import hub as hub_cli
from ngpt.console import error_panel

app = typer.Typer(
    name="ngpt",
    help="Train a small chat LLM from scratch: tokenizer → caches → pretrain → SFT → chat/serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tokenizer.app, name="tokenizer", help="Train and inspect the sentencepiece tokenizer.")
app.add_typer(cache.app, name="cache", help="Build and validate the sharded token caches.")
app.add_typer(train.app, name="train", help="Pretrain, SFT, or both (pipeline).")
app.add_typer(eval_cli.app, name="eval", help="Evaluate a checkpoint: bits/byte on text, benchmarks as lm-eval scores them.")
app.add_typer(bench.app, name="bench", help="Benchmarks: speed, and the overnight config sweep.")
app.command("chat", help="Chat with a checkpoint in the terminal.")(chat.chat)
app.command("serve", help="OpenAI-compatible HTTP server with a web page.")(serve.serve)
app.add_typer(hub_cli.app, name="hub", help="Upload/download models to/from the Hugging Face hub.")
app.add_typer(export_cli.app, name="export", help="Export a checkpoint (e.g. to Hugging Face transformers).")
app.add_typer(primer.app, name="primer", help="Generate the primer SFT dialogues from facts.")
app.command("demo")(demo.demo)

# Errors a user can fix: shown as one readable panel, exit code 1, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, RuntimeError)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="ngpt")
    except USER_ERRORS as e:
        error_panel(str(e), title=type(e).__name__)
        sys.exit(1)
