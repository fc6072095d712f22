"""`ngpt cache` commands: build one source's token cache, build every cache the mixes need, validate.

    ngpt cache build wikitext --source wikitext=../shared/data/wikitext-2-raw-v1
    ngpt cache build-all --config configs/demo.json
    ngpt cache validate --phase sft --deep
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.markup import escape

from ngpt.cli.common import ConfigOpt, PrintConfigOpt, SourceOpt, resolve_settings, setting_help
from ngpt.console import console, table
from ngpt.settings import ALL_SOURCES, Settings
from ngpt.tokcache.layout import phase_of
from ngpt.tokcache.plan import build_caches, caches_to_build
from ngpt.tokcache.validate import CacheRow, validate
from ngpt.tokenizer import Tokenizer

app = typer.Typer(no_args_is_help=True)

RoamDirOpt = Annotated[Optional[str], typer.Option("--roam-dir", help=setting_help("data.roam_dir"))]
FwTrainOpt = Annotated[Optional[int], typer.Option("--fineweb-train-tokens", help=setting_help("data.fineweb_train_tokens"))]
FwValOpt = Annotated[Optional[int], typer.Option("--fineweb-val-tokens", help=setting_help("data.fineweb_val_tokens"))]
ShardBytesOpt = Annotated[Optional[int], typer.Option("--shard-bytes", help=setting_help("data.shard_bytes"))]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help=setting_help("data.workers"))]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help=setting_help("data.seed"))]


def _settings(
    config: Path | None,
    sources: list[str] | None,
    print_config: bool,
    roam_dir: str | None,
    train_tokens: int | None,
    val_tokens: int | None,
    shard_bytes: int | None,
    workers: int | None,
    seed: int | None,
) -> Settings:
    data = {
        "roam_dir": roam_dir,
        "fineweb_train_tokens": train_tokens,
        "fineweb_val_tokens": val_tokens,
        "shard_bytes": shard_bytes,
        "workers": workers,
        "seed": seed,
    }
    return resolve_settings(config, sources, {"data": data}, print_config)


def _print_rows(rows: list[CacheRow], title: str) -> None:
    cells = [
        (r.source, r.phase, r.split, r.tokens, r.examples, r.shards, f"{r.mb:,.2f}", f"[{'green' if r.ok else 'red'}]{escape(r.status)}")
        for r in rows
    ]
    console.print(table(title, ("source", "phase", "split", "tokens", "examples", "shards", "MB", "status"), cells))
    if not all(r.ok for r in rows):
        console.print("[red]Some caches failed validation; rebuild them with `ngpt cache build SOURCE`.")
        raise typer.Exit(1)


@app.command("build")
def build(
    source: Annotated[str, typer.Argument(help=f"One of: {', '.join(ALL_SOURCES)}.")],
    config: ConfigOpt = None,
    sources: SourceOpt = None,
    roam_dir: RoamDirOpt = None,
    fineweb_train_tokens: FwTrainOpt = None,
    fineweb_val_tokens: FwValOpt = None,
    shard_bytes: ShardBytesOpt = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Build the token cache of one source (replacing an older one only when the new one is complete)."""
    settings = _settings(config, sources, print_config, roam_dir, fineweb_train_tokens, fineweb_val_tokens, shard_bytes, workers, seed)
    caches = [(phase_of(source), source)]
    tok = build_caches(settings, caches)
    _print_rows(validate(settings, tok, caches=caches), "Cache")


@app.command("build-all")
def build_all(
    config: ConfigOpt = None,
    sources: SourceOpt = None,
    roam_dir: RoamDirOpt = None,
    fineweb_train_tokens: FwTrainOpt = None,
    fineweb_val_tokens: FwValOpt = None,
    shard_bytes: ShardBytesOpt = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Build every cache the mixes need (mix_pretrain, val_pretrain_source, mix_sft; roam if present), then validate."""
    settings = _settings(config, sources, print_config, roam_dir, fineweb_train_tokens, fineweb_val_tokens, shard_bytes, workers, seed)
    caches = caches_to_build(settings)
    tok = build_caches(settings, caches)
    _print_rows(validate(settings, tok, caches=caches), "Caches")


@app.command("validate")
def validate_cmd(
    phase: Annotated[Literal["pretrain", "sft", "all"], typer.Option("--phase", help="Which mixes' caches to check.")] = "all",
    deep: Annotated[bool, typer.Option("--deep", help="Re-read every token and re-hash every file.")] = False,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Check the caches the configured mixes need: present, complete, same tokenizer, ids in range."""
    settings = resolve_settings(config, None, None, print_config)
    tok = Tokenizer(settings.tokenizer.model_path)
    _print_rows(validate(settings, tok, phase=phase, deep=deep), f"Caches ({phase}{', deep' if deep else ''})")
