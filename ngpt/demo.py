"""The whole loop, offline and small: what `ngpt demo` runs, as library calls.

    result = run_demo(Path("artifacts/demo"), Path("configs/demo.json"), prompt="What is ngpt?")

Write the demo notes (the project's own text, generated from data/public_facts.json) → train the
tokenizer on them and the primer → build and validate the caches → pretrain on the notes, then SFT
on data/primer.jsonl → one chat reply from the SFT checkpoint. The same functions a real run's
commands call, only smaller; everything it writes lives in the workdir (replaced on each run).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ngpt.console import console, kv_table
from ngpt.settings import Settings, load_settings, read_config_file

FACTS = Path("data/public_facts.json")
PRIMER = Path("data/primer.jsonl")
STEPS = ("tokenizer train", "cache build-all", "cache validate", "train pipeline", "chat")


@dataclass
class DemoResult:
    settings: Settings
    config: Path  # the demo's resolved config file inside the workdir
    pretrain_evals: list[dict]  # metrics.jsonl eval records of each phase
    sft_evals: list[dict]
    reply: str
    checkpoint: Path


def write_demo_config(workdir: Path, config: Path, notes: Path) -> Path:
    """configs/demo.json with every path pointed into the workdir; validated before any work."""
    cfg = read_config_file(config)
    cfg["tokenizer"] = {**cfg.get("tokenizer", {}), "model_path": str(workdir / "tokenizer" / "spm.model")}
    cfg["data"] = {**cfg.get("data", {}), "cache_dir": str(workdir / "cache"),
                   "sources": {"roam": str(notes), "primer": str(PRIMER)}}
    cfg["checkpoints_dir"], cfg["runs_dir"] = str(workdir / "checkpoints"), str(workdir / "runs")
    out = workdir / "config.json"
    out.write_text(json.dumps(cfg, indent=2))
    load_settings(out)  # a bad demo config fails here, before any work
    return out


def run_demo(workdir: Path, config: Path, prompt: str) -> DemoResult:
    from ngpt.chat_format import prompt_ids
    from ngpt.demo_corpus import write_notes
    from ngpt.inference import load_engine
    from ngpt.metrics import read_metrics
    from ngpt.sampling import SamplingParams
    from ngpt.tokcache.plan import build_caches, caches_to_build
    from ngpt.tokcache.validate import validate
    from ngpt.tokenizer import sample_sources, train_tokenizer
    from ngpt.train.pipeline import raw_overrides, run_pipeline

    for needed in (FACTS, PRIMER, config):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run `ngpt demo` from the root of an ngpt checkout.")
    if workdir.exists():
        shutil.rmtree(workdir)
    notes = workdir / "notes"
    paths = write_notes(FACTS, notes, seed=0)
    demo_cfg = write_demo_config(workdir, config, notes)
    settings = load_settings(demo_cfg)
    console.print(kv_table("ngpt demo", {
        "workdir": workdir, "config": f"{config} → {demo_cfg}",
        "pretrain text": f"{len(paths)} notes generated from {FACTS} (roam)", "sft data": f"{PRIMER} (primer)",
        **{f"step {i + 1}": step for i, step in enumerate(STEPS)},
    }))

    console.rule("tokenizer train")
    tok_cfg = settings.tokenizer
    meta = train_tokenizer(sample_sources(settings, tok_cfg.sample_bytes), Path(tok_cfg.model_path).parent,
                           tok_cfg.vocab_size, tok_cfg.seed)
    console.print(f"tokenizer: {tok_cfg.model_path}, vocab {meta['vocab_size']:,}, sha256 {meta['sha256'][:16]}")
    console.rule("cache build-all")
    caches = caches_to_build(settings)
    tok = build_caches(settings, caches)
    console.rule("cache validate")
    bad = [r for r in validate(settings, tok, caches=caches) if not r.ok]
    if bad:
        raise RuntimeError("demo caches failed validation: " + "; ".join(f"{r.source}/{r.split}: {r.status}" for r in bad))
    console.print(f"{len(caches)} caches ok")
    console.rule("train pipeline")
    run_pipeline(settings, raw_overrides=raw_overrides(demo_cfg, {}), no_resume=True, run_id="demo")

    console.rule("chat")
    runs = Path(settings.runs_dir)
    pre = [r for r in read_metrics(runs / "demo-pretrain" / "metrics.jsonl") if "val_pretrain_loss" in r]
    sft = [r for r in read_metrics(runs / "demo-sft" / "metrics.jsonl") if "val_sft_loss" in r]
    best = Path(settings.checkpoints_dir) / "best.pt"
    engine = load_engine(best)[0]
    messages = [{"role": "user", "content": prompt}]
    result = engine.generate(prompt_ids(engine.tok, messages), SamplingParams.from_settings(settings.generation))
    return DemoResult(settings, demo_cfg, pre, sft, result.text.strip(), best)
