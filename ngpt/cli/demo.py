"""`ngpt demo`: the whole loop, offline, in a few minutes on a laptop CPU (ngpt.demo does the work).

    ngpt demo                      # workdir artifacts/demo, config configs/demo.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ngpt.console import console, table


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything (replaced on each run).")] = Path("artifacts/demo"),
    config: Annotated[Path, typer.Option("--config", "-c", help="Demo settings (model, steps, mixes).")] = Path("configs/demo.json"),
    prompt: Annotated[str, typer.Option(help="What to ask the trained model at the end.")] = "What is ngpt?",
) -> None:
    """Train a tiny chat model end to end from the shipped data, offline, then ask it one question."""
    from ngpt.demo import run_demo

    t0 = time.monotonic()
    result = run_demo(workdir, config, prompt)
    pre, sft = result.pretrain_evals, result.sft_evals
    console.print(table("learning", ("curve", "first eval", "last eval"), [
        ("val_pretrain_loss (pretrain)", f"{pre[0]['val_pretrain_loss']:.3f}", f"{pre[-1]['val_pretrain_loss']:.3f}"),
        ("val_sft_loss (sft)", f"{sft[0]['val_sft_loss']:.3f}", f"{sft[-1]['val_sft_loss']:.3f}"),
    ]))
    console.print(f"[bold]you:[/bold] {prompt}")
    console.print(f"[bold]ngpt:[/bold] {result.reply}")
    console.print(f"demo finished in {time.monotonic() - t0:.0f} s; chat more with `ngpt chat --ckpt {result.checkpoint}`")
