"""Building the caches a run asks for: which ones, checked before anything is written, then built.

    caches = caches_to_build(settings)                   # [("pretrain", "wikitext"), ("sft", "oasst1"), ...]
    tok = build_caches(settings, caches)                 # preflight, print the plan, build each (progress bars)
    tok, sources = preflight(settings, [n for _, n in caches])   # just the checks: one error listing every problem

The preflight loads the tokenizer and runs every source's cheap `check()`, so with no network and
no local paths the command fails in seconds, naming each source and how to give a local copy.
"""

from __future__ import annotations

import time

from rich.markup import escape

from ngpt.console import console, human_bytes, progress, table
from ngpt.settings import ALL_SOURCES, Settings
from ngpt.sources.base import SPLITS, Source
from ngpt.sources.preflight import SourcesNotReady, open_checked
from ngpt.tokcache.layout import PHASES, Phase, dtype_for_vocab, needed_caches, roam_path, source_dir
from ngpt.tokcache.build import build_source, resolved_workers
from ngpt.tokenizer import Tokenizer


class PreflightError(RuntimeError):
    """Some sources (or the tokenizer) cannot be read; nothing has been written."""


def caches_to_build(settings: Settings) -> list[tuple[Phase, str]]:
    """Every cache the mixes need, plus roam when its notes directory exists, in a stable order."""
    caches = set(needed_caches(settings, "all"))
    if roam_path(settings).is_dir():
        caches.add(("pretrain", "roam"))
    return sorted(caches, key=lambda c: (PHASES.index(c[0]), ALL_SOURCES.index(c[1])))


def preflight(settings: Settings, names: list[str]) -> tuple[Tokenizer, list[Source]]:
    """Load the tokenizer and check every source; one PreflightError lists all that fail."""
    problems: list[str] = []
    tok = None
    try:
        tok = Tokenizer(settings.tokenizer.model_path)
        dtype_for_vocab(tok.vocab_size)
    except (FileNotFoundError, ValueError) as e:
        problems.append(f"- tokenizer: {e}")
    sources: list[Source] = []
    try:
        sources = open_checked(names, settings)
    except SourcesNotReady as e:  # its message lists each source and how to give a local path
        problems.append(str(e))
    else:
        if problems:
            problems.append("Nothing was written.")
    if problems:
        raise PreflightError("Cannot build token caches:\n" + "\n".join(problems))
    assert tok is not None
    return tok, sources


def budget_text(source: Source) -> str:
    budgets = source.token_budgets()
    if all(budgets.get(s) is None for s in SPLITS):
        return "all"
    order = ("val", "train") if source.streamed else SPLITS  # a stream fills val first
    parts = [f"{s} {budgets[s]:,}" if budgets.get(s) is not None else f"{s} all" for s in order]
    return (" then " if source.streamed else ", ").join(parts)


def plan_rows(settings: Settings, sources: list[Source]) -> list[tuple[str, ...]]:
    """(source, phase, from, token budget, shard size, out dir) per source."""
    rows = []
    for source in sources:
        out = source_dir(settings.data.cache_dir, source.kind, source.name)
        rows.append(
            (source.name, source.kind, source.origin, budget_text(source), human_bytes(settings.data.shard_bytes), str(out))
        )
    return rows


def build_caches(settings: Settings, caches: list[tuple[Phase, str]]) -> Tokenizer:
    """Preflight every cache's source, print the plan, build each with a progress bar; the tokenizer used."""
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
