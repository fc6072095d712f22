"""`ngpt bench learn`: what a config learns in a fixed wall time or token count, and ablations of it.

    ngpt bench learn -c configs/shakespeare.json --source wikitext=bench/shakespeare --max-time 110s
    ngpt bench learn -c configs/books.json --max-time 300s --ablate pretrain.optimizer=adamw,muon --ablate model.qk_norm=false
    ngpt bench learn -c configs/demo.json --max-tokens 2000000 --set pretrain.muon_lr=0.03
    ngpt bench learn -c configs/chat.json --phase sft --init-from bench/chat/pretrain.pt --max-time 60s --ablate sft.lr=3e-4,1e-3

Prints the plan, trains (one run; or with --ablate the baseline and every variant, each in a fresh
process with the same seed and budget), then a table of val bits/byte against the baseline; the last
line is JSON. An ablation also writes that table and JSON to --out/ablation.md and ablation.json.
The library side is ngpt/bench/learn.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ngpt.cli.common import ConfigOpt, SourceOpt, setting_help
from ngpt.console import console, kv_table, table


def learn(
    config: ConfigOpt = None,
    source: SourceOpt = None,
    phase: Annotated[Literal["pretrain", "sft"], typer.Option("--phase", help="What to train: pretrain from scratch, or "
                                                                "sft from --init-from (scored on the SFT val splits' assistant tokens).")] = "pretrain",
    init_from: Annotated[Optional[Path], typer.Option("--init-from", help="--phase sft: the pretrained checkpoint every run starts from.")] = None,
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
    from ngpt.bench.learn import (LearnPlan, budget_overrides, comparison_rows, markdown_table, nested, parse_assignment,
                                  run_in_subprocess, run_learn, variants)
    from ngpt.io_utils import atomic_write_text
    from ngpt.settings import deep_merge, load_settings, parse_source_flags

    if phase == "sft" and init_from is None:
        raise typer.BadParameter("--phase sft fine-tunes a pretrained model: pass its checkpoint, e.g. "
                                 "--init-from checkpoints/pretrain/best.pt", param_hint="--init-from")
    if init_from is not None and not init_from.is_file():
        raise typer.BadParameter(f"{init_from} is not a file", param_hint="--init-from")
    base = deep_merge(parse_source_flags(source), budget_overrides(max_time, max_tokens, phase))
    for item in set_ or []:
        key, values = parse_assignment(item, "--set")
        if len(values) != 1:
            raise typer.BadParameter(f"--set takes one value, got {item!r} (use --ablate to compare several)", param_hint="--set")
        base = deep_merge(base, nested(key, values[0]))
    if overrides_json:
        base = json.loads(overrides_json)
    plan = LearnPlan(config, base, [parse_assignment(a, "--ablate") for a in ablate or []], out, phase, init_from)
    runs = variants(plan)
    # load_settings, not resolve_settings: a --set/--ablate value of null (e.g. model.logit_softcap=null) is a
    # setting, not an absent flag to prune. Every variant's settings load before any training starts.
    for run_name, extra in runs:
        load_settings(config, overrides=deep_merge(base, extra))
    settings = load_settings(config, overrides=base)
    if not quiet:
        t = getattr(settings, phase)
        sft = phase == "sft"
        console.print(kv_table(f"bench learn ({phase})", {
            "config": config or "defaults", "model": settings.model.dims_label,
            "data": settings.data.mix_sft if sft else settings.data.mix_pretrain,
            **({"starts from": init_from} if sft else {}),
            "scored on": (f"every example of the val splits of {', '.join(settings.data.mix_sft)} (assistant tokens)" if sft
                          else f"the whole val split of {settings.data.val_pretrain_source}"),
            "budget": t.max_time or (f"{t.max_tokens:,} tokens" if t.max_tokens else f"{t.total_steps} steps"),
            "batch": f"{t.micro_batch} × {t.accum_steps} × T={settings.model.seq_len}",
            "recipe": f"{t.optimizer}, {t.schedule} schedule, warmup {t.warmup_steps} steps"
                      + (f", warmdown {t.warmdown_frac:g} of the budget" if t.schedule == "wsd" else ""),
            "runs": ", ".join(n for n, _ in runs) + (" (each in a fresh process)" if len(runs) > 1 else ""),
            "out": out,
        }))
    if len(runs) == 1:
        results = [run_learn(settings, out, name, show=not quiet, phase=phase, init_from=init_from)]
    else:
        results = []
        for run_name, extra in runs:
            with console.status(f"training {run_name}"):
                results.append(run_in_subprocess(plan, run_name, extra))
            if not quiet:
                r = results[-1]
                console.print(f"{run_name}: val {r.val_bpb:.4f} bits/byte, {r.steps} steps, {r.tokens_per_s:,.0f} tok/s")
    if result_file is not None:  # a child run's answer to its parent
        atomic_write_text(result_file, json.dumps(results[0].to_json()))
    if quiet:
        return
    header, rows = comparison_rows(results)
    console.print(table("val bits/byte", header, rows))
    # "settings" is what every run shares (--set, --source, the budget); each run's "overrides" is its own variant.
    record = {"mode": "learn", "phase": phase, "settings": base, "runs": [r.to_json() for r in results]}
    if len(results) > 1:  # an ablation's table and record stay beside its runs
        atomic_write_text(out / "ablation.md", markdown_table(header, rows))
        atomic_write_text(out / "ablation.json", json.dumps(record, indent=1))
        console.print(f"table and JSON: {out / 'ablation.md'}, {out / 'ablation.json'}")
    print(json.dumps(record))
