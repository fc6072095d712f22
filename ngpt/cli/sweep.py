"""`ngpt bench sweep`: the model config and training knobs of this machine's most useful overnight run.

    ngpt bench sweep --device cpu
    ngpt bench sweep --hours 8 --write-config configs/overnight.json
    ngpt bench sweep --grid my_grid.json --timeout-s 60 --max-micro-b 128 --out bench/

Prints the plan, a progress bar over trials, then the ranked table that bench/summary.md also holds;
every trial is a line of bench/results.jsonl, and the winner is bench/overnight.json (an override
file for `ngpt train pretrain -c`). Ctrl-C stops it; the same command resumes. The library side is
ngpt/bench/sweep/; this module only turns flags into a SweepPlan and results into tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ngpt.cli.common import ConfigOpt, resolve_settings
from ngpt.console import console, error_panel, kv_table, progress, table

if TYPE_CHECKING:
    from ngpt.bench.sweep import Sweep


def sweep(
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps (auto: cuda > mps > cpu).")] = "auto",
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", min=1, help="Seconds before a trial is killed and recorded as a timeout.")
    ] = 20.0,
    max_micro_b: Annotated[int, typer.Option("--max-micro-b", min=1, help="Largest micro-batch the search tries.")] = 64,
    grid: Annotated[
        Optional[Path], typer.Option("--grid", help="JSON list of configs (keys: seq_len, n_embd, n_layer, n_head, "
                                     "vocab_size, d_ff, amp, amp_dtype). Default: a grid for this device.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.jsonl, summary.md, overnight.json.")] = Path("bench"),
    hours: Annotated[float, typer.Option(min=0.001, help="Length of the run to plan (total_steps, max_time).")] = 8.0,
    write_config: Annotated[
        Optional[Path], typer.Option("--write-config", help="Also write the winner's `ngpt train` override file here.")
    ] = None,
    memory_gb: Annotated[
        Optional[float], typer.Option("--memory-gb", min=0.001, help="Memory budget per trial in GiB "
                                      "(default: half the RAM on CPU, 90 % of the GPU on CUDA).")
    ] = None,
    batch_tokens: Annotated[
        Optional[int], typer.Option("--batch-tokens", min=1, help="Target effective batch in tokens per optimizer "
                                    "step, for accum_steps (default: 16384 CPU, 32768 MPS, 131072 CUDA).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Find the overnight config: fit, speed and AMP of each grid config, ranked by the 90 % rule."""
    settings = resolve_settings(config)  # model.vocab_size and the warm-up come from here
    from ngpt.bench.sweep import (  # torch: only when sweeping
        SweepPlan, busy_warning, prepare_sweep, summary_columns, summary_rows)

    plan = SweepPlan(settings=settings, device=device, out_dir=out, grid_file=grid, timeout_s=timeout_s,
                     max_micro_b=max_micro_b, hours=hours, memory_gb=memory_gb, batch_tokens=batch_tokens,
                     base_config=config, write_config=write_config)
    with console.status(f"probing {device} in a trial process"):
        sw = prepare_sweep(plan)
    console.print(plan_table(sw))
    if sw.store.dropped_torn_line:
        console.print(f"[yellow]{sw.store.path} ended in a half-written line (an interrupted sweep): dropped it; "
                      "that trial runs again.")
    try:
        with progress() as bar:
            task = bar.add_task("trials", total=sw.per_config_estimate * len(sw.grid), stats="")

            def on_trial(record: dict, reused: bool, done: int, total: int) -> None:
                spec = record["spec"]
                what = f"{spec['kind']} micro_B={spec['micro_b']}{' ckpt' if spec['activation_checkpointing'] else ''}"
                result = f"{record['tokens_per_s']:,.0f} tok/s" if record.get("tokens_per_s") else record["status"]
                bar.update(task, completed=done, total=max(total, done),
                           stats=f"{record['config']} · {what}: {result}{' (reused)' if reused else ''}")

            report = sw.run(on_trial)
            bar.update(task, total=report.ran + report.reused, completed=report.ran + report.reused)
    except KeyboardInterrupt:
        error_panel(f"Interrupted. {sw.ran} trial(s) of this run are saved in {sw.store.path}; "
                    "run the same command again to resume where it stopped.", "interrupted")
        raise typer.Exit(130) from None

    console.print(table(f"overnight throughput ({len(report.ranked)} of {len(sw.grid)} configs timed; "
                        f"{report.ran} trials run, {report.reused} reused, {report.wall_s:.0f} s)",
                        summary_columns(hours), summary_rows(report.ranked, hours)))
    warning = busy_warning(sw)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}")
    for outcome in report.outcomes:
        if outcome.failure:
            console.print(f"[yellow]not ranked:[/] {outcome.entry.label}: {outcome.failure}")
    if report.winner is None:
        error_panel(f"No config in the grid could be timed on {sw.info.device}; see {out / 'summary.md'} and "
                    f"{sw.store.path}. Try smaller configs (--grid), a larger --timeout-s or --memory-gb.",
                    "no overnight config")
        raise typer.Exit(1)
    paths = " and ".join(str(p) for p in report.config_paths)
    console.print(f"summary: {out / 'summary.md'} · overnight config: {paths}\n"
                  f"next: ngpt train pretrain -c {report.config_paths[-1]}")


def plan_table(sw: Sweep) -> Table:
    info, p = sw.info.raw, sw.plan
    matching = sum(1 for r in sw.store.records.values() if r.get("fingerprint") == sw.fingerprint)
    return kv_table("bench sweep", {
        "device": f"{info['device']} ({info['device_name']}), {info['threads']} threads, torch {info['torch']}",
        "grid": f"{sw.grid_name}: {len(sw.grid)} configs",
        "configs": "; ".join(e.label for e in sw.grid),
        "per trial": f"fresh process, killed after {p.timeout_s:g} s; memory budget "
                     + ("device default" if sw.memory_gb is None else f"{sw.memory_gb:g} GiB"),
        "micro_B search": f"1, doubling to {p.max_micro_b}, bisection below an OOM; tokens/s at max and max/2",
        "results": f"{sw.store.path} ({matching} stored trial(s) from this machine and torch are reused)",
        "plan for": f"{p.hours:g} h, {sw.batch_tokens:,} tokens per optimizer step",
    })
