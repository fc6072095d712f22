"""`ngpt tokenizer train|report`: train the sentencepiece model on a sample of the configured sources.

    ngpt tokenizer train --config configs/offline.json --sample-bytes 5000000
    ngpt tokenizer report --config configs/offline.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ngpt.cli.common import ConfigOpt, PrintConfigOpt, SourceOpt, resolve_settings, setting_help
from ngpt.console import console, human_bytes, kv_table, table
from ngpt.settings import Settings
from ngpt.tokenizer import SourceSample, Tokenizer, configured_sources, report_rows, sample_sources, train_tokenizer

app = typer.Typer(no_args_is_help=True)


def _samples(settings: Settings, max_bytes: int, split: str = "train") -> list[SourceSample]:
    status = console.status("sampling")
    with status:
        return sample_sources(settings, max_bytes, split,
                              on_source=lambda name, origin: status.update(f"sampling {name} ({origin})"))


@app.command()
def train(
    config: ConfigOpt = None,
    source: SourceOpt = None,
    vocab_size: Annotated[Optional[int], typer.Option(help=setting_help("tokenizer.vocab_size"))] = None,
    sample_bytes: Annotated[Optional[int], typer.Option(help=setting_help("tokenizer.sample_bytes"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=setting_help("tokenizer.seed"))] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: tokenizer.model_path's folder).")] = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Train the unigram tokenizer; writes spm.model + tokenizer_meta.json."""
    overrides = {"tokenizer": {"vocab_size": vocab_size, "sample_bytes": sample_bytes, "seed": seed}}
    if out is not None:
        overrides["tokenizer"]["model_path"] = str(out / "spm.model")
    s = resolve_settings(config, source, overrides, print_config)
    out_dir = Path(s.tokenizer.model_path).parent
    names = configured_sources(s)
    console.print(kv_table("tokenizer train", {
        "sources": ", ".join(names), "sample per source": human_bytes(s.tokenizer.sample_bytes),
        "vocab size": s.tokenizer.vocab_size, "seed": s.tokenizer.seed, "out": out_dir,
    }))
    samples = _samples(s, s.tokenizer.sample_bytes)
    console.print(table("training sample", ("source", "from", "documents", "bytes"),
                        [(x.source, x.origin, len(x.texts), human_bytes(x.num_bytes)) for x in samples]))
    with console.status("training sentencepiece (unigram)"):
        meta = train_tokenizer(samples, out_dir, s.tokenizer.vocab_size, s.tokenizer.seed)
    console.print(kv_table("tokenizer written", {
        "model": out_dir / "spm.model", "sha256": meta["sha256"], "vocab size": meta["vocab_size"],
        **{f"id {tok}": i for tok, i in meta["special_ids"].items()},
    }))


@app.command()
def report(
    config: ConfigOpt = None,
    source: SourceOpt = None,
    model: Annotated[Optional[Path], typer.Option(help="spm.model to report on (default tokenizer.model_path).")] = None,
    sample_bytes: Annotated[int, typer.Option(help="Text measured per source, in bytes.")] = 2_000_000,
    split: Annotated[str, typer.Option(help="Which split to measure: val (held out) or train.")] = "val",
    print_config: PrintConfigOpt = False,
) -> None:
    """Per source: bytes, tokens, bytes/token and byte-fallback share, plus the tokenizer's sha256."""
    overrides = {"tokenizer": {"model_path": str(model) if model else None}}
    s = resolve_settings(config, source, overrides, print_config)
    tok = Tokenizer.load(s.tokenizer.model_path)
    console.print(kv_table("tokenizer", {"model": tok.path, "sha256": tok.sha256, "vocab size": tok.vocab_size,
                                         "split measured": split, "sample per source": human_bytes(sample_bytes)}))
    rows = report_rows(tok, _samples(s, sample_bytes, split))
    console.print(table("tokenizer report", ("source", "bytes", "tokens", "bytes/token", "byte fallback"), [
        (r["source"], r["bytes"], r["tokens"], f'{r["bytes_per_token"]:.2f}', f'{100 * r["byte_fallback_share"]:.2f}%')
        for r in rows
    ]))
