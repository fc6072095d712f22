"""`ngpt bench learn`: what a config learns in a fixed wall time or token count, and ablations of it.

    ngpt bench learn -c configs/shakespeare.json --source wikitext=bench/shakespeare --max-time 110s
    ngpt bench learn -c configs/books.json --max-time 300s --ablate pretrain.optimizer=adamw,muon --ablate model.qk_norm=false
    ngpt bench learn -c configs/demo.json --max-tokens 2000000 --set pretrain.muon_lr=0.03

Prints the plan, trains (one run; or with --ablate the baseline and every variant, each in a fresh
process with the same seed and budget), then a table of val bits/byte against the baseline; the last
line is JSON. The library side is ngpt/bench/learn.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ngpt.cli.common import ConfigOpt, SourceOpt, resolve_settings, setting_help
from ngpt.console import console, kv_table, table


def learn(
    config: ConfigOpt = None,
    source: SourceOpt = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help=setting_help("pretrain.max_time"))] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help=setting_help("pretrain.max_tokens"))] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE: override a settings key for every run "
                                                      "(dotted, e.g. pretrain.muon_lr=0.03). Repeatable.")] = None,
    ablate: Annotated[Optional[list[str]], typer.Option("--ablate", help="KEY=V1,V2,...: also run the baseline with KEY "
                                                        "set to each value, one key at a time. Repeatable.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for each run's checkpoints, records and results.")] = Path("bench/learn"),
    name: Annotated[str, typer.Option("--name", help="This run's folder under --out (without --ablate).")] = "baseline",
    quiet: Annotated[bool, typer.Option("--quiet", help="No tables or progress (the ablation's child runs).")] = False,
    overrides_json: Annotated[Optional[str], typer.Option("--overrides-json", hidden=True)] = None,
    result_file: Annotated[Optional[Path], typer.Option("--result-file", hidden=True)] = None,
) -> None:
    """Train for a fixed budget and report val bits/byte (steps, tokens, tokens/s); --ablate compares variants."""
    from ngpt.bench.learn import LearnPlan, budget_overrides, nested, parse_assignment, run_in_subprocess, run_learn, variants
    from ngpt.settings import deep_merge, parse_source_flags

    base = deep_merge(parse_source_flags(source), budget_overrides(max_time, max_tokens))
    for item in set_ or []:
        key, values = parse_assignment(item, "--set")
        if len(values) != 1:
            raise typer.BadParameter(f"--set takes one value, got {item!r} (use --ablate to compare several)", param_hint="--set")
        base = deep_merge(base, nested(key, values[0]))
    if overrides_json:
        base = json.loads(overrides_json)
    plan = LearnPlan(config, base, [parse_assignment(a, "--ablate") for a in ablate or []], out)
    runs = variants(plan)
    for run_name, extra in runs:  # every variant's settings load before any training starts
        resolve_settings(config, None, deep_merge(base, extra))
    settings = resolve_settings(config, None, base)
    if not quiet:
        t = settings.pretrain
        console.print(kv_table("bench learn", {
            "config": config or "defaults", "model": settings.model.dims_label, "data": settings.data.mix_pretrain,
            "scored on": f"the whole val split of {settings.data.val_pretrain_source}",
            "budget": t.max_time or (f"{t.max_tokens:,} tokens" if t.max_tokens else f"{t.total_steps} steps"),
            "batch": f"{t.micro_batch} × {t.accum_steps} × T={settings.model.seq_len}",
            "runs": ", ".join(n for n, _ in runs) + (" (each in a fresh process)" if len(runs) > 1 else ""),
            "out": out,
        }))
    if len(runs) == 1:
        results = [run_learn(settings, out, name, show=not quiet)]
    else:
        results = []
        for run_name, extra in runs:
            with console.status(f"training {run_name}"):
                results.append(run_in_subprocess(plan, run_name, extra))
            if not quiet:
                r = results[-1]
                console.print(f"{run_name}: val {r.val_bpb:.4f} bits/byte, {r.steps} steps, {r.tokens_per_s:,.0f} tok/s")
    record = {"mode": "learn", "runs": [r.to_json() for r in results]}
    if result_file is not None:
        result_file.write_text(json.dumps(results[0].to_json()))
    if not quiet:
        base_bpb = results[0].val_bpb
        console.print(table("val bits/byte", ("run", "val bpb", "Δ vs baseline", "val loss", "steps", "tokens", "tokens/s", "params"), [
            (r.name, f"{r.val_bpb:.4f}", "—" if i == 0 else f"{r.val_bpb - base_bpb:+.4f}", f"{r.val_loss:.4f}", r.steps,
             f"{r.tokens:,}", f"{r.tokens_per_s:,.0f}", f"{r.params:,}") for i, r in enumerate(results)]))
        print(json.dumps(record))
