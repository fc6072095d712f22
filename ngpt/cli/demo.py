"""`ngpt demo`: the whole loop, offline, in a few minutes on a laptop CPU.

    ngpt demo                      # workdir artifacts/demo, config configs/demo.json

It runs the same commands a real run does, only smaller: write the demo notes (the project's own
text, generated from data/public_facts.json) → `ngpt tokenizer train` → `ngpt cache build-all`
→ `ngpt cache validate` → `ngpt train pipeline` (pretrain on the notes, SFT on data/primer.jsonl)
→ a chat reply from the SFT checkpoint. Everything it writes lives in the workdir.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from ngpt.console import console, kv_table, table
from ngpt.settings import load_settings, read_config_file

FACTS = Path("data/public_facts.json")
PRIMER = Path("data/primer.jsonl")


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything (replaced on each run).")] = Path("artifacts/demo"),
    config: Annotated[Path, typer.Option("--config", "-c", help="Demo settings (model, steps, mixes).")] = Path("configs/demo.json"),
    prompt: Annotated[str, typer.Option(help="What to ask the trained model at the end.")] = "What is ngpt?",
) -> None:
    """Train a tiny chat model end to end from the shipped data, offline, then ask it one question."""
    from ngpt.chat_format import prompt_ids
    from ngpt.cli.main import app
    from ngpt.demo_corpus import write_notes
    from ngpt.inference import load_engine
    from ngpt.sampling import SamplingParams
    from ngpt.metrics import read_metrics

    for needed in (FACTS, PRIMER, config):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run `ngpt demo` from the root of an ngpt checkout.")
    t0 = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    notes = workdir / "notes"
    paths = write_notes(FACTS, notes, seed=0)
    cfg = read_config_file(config)
    cfg["tokenizer"] = {**cfg.get("tokenizer", {}), "model_path": str(workdir / "tokenizer" / "spm.model")}
    cfg["data"] = {**cfg.get("data", {}), "cache_dir": str(workdir / "cache"),
                   "sources": {"roam": str(notes), "primer": str(PRIMER)}}
    cfg["checkpoints_dir"], cfg["runs_dir"] = str(workdir / "checkpoints"), str(workdir / "runs")
    demo_cfg = workdir / "config.json"
    demo_cfg.write_text(json.dumps(cfg, indent=2))
    load_settings(demo_cfg)  # a bad demo config fails here, before any work

    steps = [
        ["tokenizer", "train", "-c", str(demo_cfg)],
        ["cache", "build-all", "-c", str(demo_cfg)],
        ["cache", "validate", "-c", str(demo_cfg)],
        ["train", "pipeline", "-c", str(demo_cfg), "--no-resume", "--run-id", "demo"],
    ]
    console.print(kv_table("ngpt demo", {
        "workdir": workdir, "config": f"{config} → {demo_cfg}",
        "pretrain text": f"{len(paths)} notes generated from {FACTS} (roam)", "sft data": f"{PRIMER} (primer)",
        **{f"step {i + 1}": "ngpt " + " ".join(s) for i, s in enumerate(steps)},
    }))
    for args in steps:
        console.rule("ngpt " + " ".join(args))
        app(args=args, prog_name="ngpt", standalone_mode=False)

    evals = [r for r in read_metrics(workdir / "runs" / "demo-pretrain" / "metrics.jsonl") if "val_pretrain_loss" in r]
    sft_evals = [r for r in read_metrics(workdir / "runs" / "demo-sft" / "metrics.jsonl") if "val_sft_loss" in r]
    engine = load_engine(workdir / "checkpoints" / "best.pt")[0]
    settings = load_settings(demo_cfg)
    messages = [{"role": "user", "content": prompt}]
    result = engine.generate(prompt_ids(engine.tok, messages), SamplingParams.from_settings(settings.generation))
    console.print(table("learning", ("curve", "first eval", "last eval"), [
        ("val_pretrain_loss (pretrain)", f"{evals[0]['val_pretrain_loss']:.3f}", f"{evals[-1]['val_pretrain_loss']:.3f}"),
        ("val_sft_loss (sft)", f"{sft_evals[0]['val_sft_loss']:.3f}", f"{sft_evals[-1]['val_sft_loss']:.3f}"),
    ]))
    console.print(f"[bold]you:[/bold] {prompt}")
    console.print(f"[bold]ngpt:[/bold] {result.text.strip()}")
    console.print(f"demo finished in {time.monotonic() - t0:.0f} s; chat more with "
                  f"`ngpt chat --ckpt {workdir / 'checkpoints' / 'best.pt'}`")
