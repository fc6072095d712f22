"""What a training run will do, shown before step 0: a runtime table and a mix table.

Runtime: device, precision, compile, activation checkpointing, micro_B, accum_steps, world size,
effective batch in tokens, parameters, tokenizer sha, resume/init source. Mix: per source, weight,
train/val tokens and shards (read from the caches' meta.json). The same tables go into report.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ngpt.console import console, table
from ngpt.device import Precision
from ngpt.settings import Settings
from ngpt.tokcache.layout import read_meta, source_dir
from ngpt.tokenizer import Tokenizer
from ngpt.train import compile_policy as cp
from ngpt.train.distributed import DistInfo


@dataclass
class TrainingPlan:
    phase: str
    runtime: dict
    mix: list[tuple]

    @classmethod
    def build(cls, settings: Settings, phase: str, device: torch.device, precision: Precision, info: DistInfo,
              model, tok: Tokenizer, tokens_per_step: int, peak_lrs: dict[str, float], start_step: int,
              resume: Path | None, init_from: Path | None, run_dir: Path) -> "TrainingPlan":
        cfg = getattr(settings, phase)
        m = settings.model
        runtime = {
            "phase": phase,
            "device": f"{device} × {info.world_size}" if info.enabled else str(device),
            "precision": precision.label + (f" ({precision.why})" if precision.why else ""),
            "compile": compile_label(cfg.compile),
            "activation checkpointing": cfg.activation_checkpointing,
            "model": m.dims_label,
            "architecture": architecture_label(m),
            "params": f"{model.num_params() / 1e6:.2f}M",
            "micro_B": cfg.micro_batch,
            "accum_steps": cfg.accum_steps,
            "effective batch (tokens)": f"{tokens_per_step:,}",
            "steps": f"{start_step} → {cfg.total_steps}",
            "optimizer": optimizer_label(cfg),
            "lr": " · ".join(f"{g} {lr:.3g}" for g, lr in peak_lrs.items() if g != "head" or not m.tie_embeddings)
                  + (" (scaled from C=%d, %s tokens/step)" % (cfg.lr_ref_width, f"{cfg.lr_ref_batch_tokens:,}") if cfg.lr_scaling else ""),
            "schedule": schedule_label(cfg),
            "tokenizer sha256": tok.sha256[:16],
            "start": f"resume {resume}" if resume else (f"init from {init_from}" if init_from else "from scratch"),
            "run dir": str(run_dir),
        }
        if cfg.max_tokens:
            runtime["stop at tokens"] = f"{cfg.max_tokens:,}"
        if cfg.max_time:
            runtime["stop after"] = cfg.max_time
        cache_phase, mix = ("pretrain", settings.data.mix_pretrain) if phase == "pretrain" else ("sft", settings.data.mix_sft)
        rows = []
        for name, weight in mix.items():
            meta = read_meta(source_dir(settings.data.cache_dir, cache_phase, name))
            sp = meta["splits"]
            rows.append((name, f"{weight:g}", f"{sp['train']['num_tokens']:,}", f"{sp['val']['num_tokens']:,}",
                         len(sp["train"]["shards"]) + len(sp["val"]["shards"])))
        return cls(phase, runtime, rows)

    def tables(self) -> dict[str, dict]:
        return {"runtime": self.runtime,
                "mix": {r[0]: f"weight {r[1]}, train {r[2]} tokens, val {r[3]} tokens, {r[4]} shards" for r in self.mix}}


def compile_label(choice) -> str:
    if choice != "auto":
        return str(choice)
    return (f"auto: after {cp.WARMUP_STEPS + cp.PROBE_STEPS} eager steps, compiles if ≥ {cp.MIN_SECONDS_LEFT / 60:.0f} min "
            f"are left; stays compiled if ≥ {cp.MIN_SPEEDUP:g}× faster")


def architecture_label(m) -> str:
    """The model options that differ from plain Llama, e.g. 'qk_norm · relu2 · untied · softcap 15'."""
    parts = [m.mlp]
    if m.qk_norm:
        parts.append("qk_norm")
    parts.append("tied" if m.tie_embeddings else "untied")
    if m.logit_softcap is not None:
        parts.append(f"softcap {m.logit_softcap:g}")
    if m.zero_init:
        parts.append("zero-init outputs")
    if not m.norm_gains:
        parts.append("norms without gains")
    if m.embed_norm:
        parts.append("embedding norm")
    return " · ".join(parts)


def weight_decay_label(cfg) -> str:
    decay = cfg.group_weight_decays()
    if decay["embedding"] == decay["head"] == cfg.weight_decay:
        return f"weight decay {cfg.weight_decay:g}"
    return f"weight decay {cfg.weight_decay:g} (embedding {decay['embedding']:g}, head {decay['head']:g})"


def optimizer_label(cfg) -> str:
    if cfg.optimizer == "adamw":
        return f"AdamW β {cfg.adam_betas[0]:g}/{cfg.adam_betas[1]:g}, {weight_decay_label(cfg)}"
    name = f"NorMuon (β₂ {cfg.muon_beta2:g}, " if cfg.muon_row_norm else "Muon ("
    return (f"{name}momentum {cfg.muon_momentum_start:g}→{cfg.muon_momentum:g} over {cfg.muon_momentum_warmup_steps} steps, "
            f"{cfg.muon_ns_steps} NS steps, {cfg.muon_ns_scaling} scaling) + AdamW β {cfg.adam_betas[0]:g}/{cfg.adam_betas[1]:g}, "
            f"{weight_decay_label(cfg)}")


def schedule_label(cfg) -> str:
    end = f"to {cfg.final_lr_frac:g}× over the budget"
    if cfg.schedule == "cosine":
        return f"warmup {cfg.warmup_steps} steps, cosine {end}"
    return f"warmup {cfg.warmup_steps} steps, stable, linear warmdown over the last {cfg.warmdown_frac:.0%} {end}"


def print_plan(plan: TrainingPlan) -> None:
    console.print(table(f"{plan.phase}: runtime", ("setting", "value"), plan.runtime.items()))
    console.print(table(f"{plan.phase}: data mix", ("source", "weight", "train tokens", "val tokens", "shards"), plan.mix))
