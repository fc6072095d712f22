"""`ngpt cache` commands: build one source's token cache, build every cache the mixes need, validate.

    ngpt cache build wikitext --source wikitext=../shared/data/wikitext-2-raw-v1
    ngpt cache build-all --config configs/demo.json
    ngpt cache validate --phase sft --deep
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.markup import escape

from ngpt.cli.common import ConfigOpt, PrintConfigOpt, SourceOpt, resolve_settings
from ngpt.console import console, progress, table
from ngpt.settings import ALL_SOURCES, Settings
from ngpt.sources.base import SPLITS
from ngpt.tokcache.build import build_source, resolved_workers
from ngpt.tokcache.layout import Phase, phase_of
from ngpt.tokcache.plan import build_all_caches, plan_rows, preflight
from ngpt.tokcache.validate import CacheRow, validate
from ngpt.tokenizer import Tokenizer

app = typer.Typer(no_args_is_help=True)

RoamDirOpt = Annotated[Optional[str], typer.Option("--roam-dir", help="Markdown notes directory for 'roam'.")]
FwTrainOpt = Annotated[Optional[int], typer.Option("--fineweb-train-tokens", help="Train tokens taken from the fineweb-edu stream.")]
FwValOpt = Annotated[Optional[int], typer.Option("--fineweb-val-tokens", help="Val tokens taken from the start of the fineweb-edu stream.")]
ShardBytesOpt = Annotated[Optional[int], typer.Option("--shard-bytes", help="Shard file size in bytes.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Tokenizer processes (0 = all cores, 1 = in-process).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for splits and caches (data.seed).")]


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


def _build(settings: Settings, caches: list[tuple[Phase, str]]) -> Tokenizer:
    """Preflight everything, print the plan, build each source with a progress bar."""
    tok, sources = preflight(settings, [name for _, name in caches])
    console.print(
        table(
            f"Cache build plan (tokenizer {tok.path}, vocab {tok.vocab_size:,}, {resolved_workers(settings)} workers)",
            ("source", "phase", "from", "token budget", "shard size", "out dir"),
            [tuple(escape(cell) for cell in row) for row in plan_rows(settings, sources)],
        )
    )
    with progress() as bars:
        for source in sources:
            budgets = source.token_budgets()
            known = all(budgets.get(s) is not None for s in SPLITS)
            task = bars.add_task(source.name, total=sum(budgets[s] for s in SPLITS) if known else None, stats="")
            t0 = time.monotonic()

            def report(items: int, tokens: int, task=task, t0=t0) -> None:
                dt = max(time.monotonic() - t0, 1e-9)
                bars.update(task, completed=tokens, stats=f"{items / dt:,.0f} docs/s  {tokens / dt:,.0f} tok/s")

            meta = build_source(settings, source, tok, report)
            total = sum(meta["splits"][s]["num_tokens"] for s in SPLITS)
            bars.update(task, total=total, completed=total)
    return tok


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
    tok = _build(settings, caches)
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
    caches = build_all_caches(settings)
    tok = _build(settings, caches)
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
