"""The one training loop, shared by pretrain and SFT.

    result = run_phase(settings, "pretrain")                # ngpt train pretrain
    run_phase(settings, "sft", init_from=result.best)       # ngpt train sft / pipeline

Order of work: check everything (preflight) → build model/optimizer/batches → restore a checkpoint
if resuming → print the plan → train. Each optimizer step accumulates `accum_steps` micro-batches
(DDP syncs gradients only on the last), clips to grad_clip, and follows the warmup+cosine schedule.
Every `ckpt_every` steps it saves latest/step_N (before eval, so an eval crash loses nothing);
every `eval_every` steps it measures the val losses and saves best.pt when this phase's val loss
improved. A NaN/inf loss stops the run at once, naming the step, without saving over good checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ngpt.batches import PretrainBatches, SFTBatches
from ngpt.device import Precision, cached_matmul_peak, resolve_device, resolve_precision, retain_freed_memory
from ngpt.io_utils import atomic_write_text
from ngpt.model import GPT
from ngpt.settings import Settings, TrainSettings, settings_json
from ngpt.tokcache.reader import PretrainReader, SFTReader
from ngpt.tokenizer import Tokenizer
from ngpt.train import distributed
from ngpt.train.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    CheckpointManager,
    check_same_shape,
    load_checkpoint,
    resolve_resume,
)
from ngpt.train.evaluate import eval_losses
from ngpt.train.optim import make_optimizer
from ngpt.train.plan import TrainingPlan, print_plan
from ngpt.train.preflight import check_before_training
from ngpt.train.progress import TrainProgress
from ngpt.train.report import MetricsLog, write_report
from ngpt.train.schedule import lr_at_step

EVAL_SEED = 4242  # fixed: every evaluation sees the same held-out batches


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@dataclass
class PhaseResult:
    phase: str
    step: int
    run_dir: Path
    latest: Path | None
    best: Path | None
    metrics: dict


def parse_duration(text: str | None) -> float | None:
    """'8h', '90m', '45s', '1h30m' → seconds."""
    if not text:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not parts or not any(parts.groups()):
        raise ValueError(f"max_time={text!r}: use a duration like '8h', '90m', '1h30m' or '45s'")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


def autocast_factory(device: torch.device, precision: Precision):
    if not precision.enabled:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=precision.dtype)


def rng_state() -> dict:
    # numpy's MT19937 key becomes a list: checkpoints load with weights_only=True, which refuses arrays.
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def make_batches(settings: Settings, tok: Tokenizer, phase: str, split: str, batch_size: int, seed: int, rank: int):
    """The training (or val) sampler of a phase: pretrain windows or packed SFT rows from the mix."""
    data, T = settings.data, settings.model.seq_len
    if phase == "pretrain":
        mix = data.mix_pretrain if split == "train" else {data.val_pretrain_source: 1.0}
        readers = {n: PretrainReader.open(data.cache_dir, n, split, tok) for n in mix}
        return PretrainBatches(readers, mix, batch_size, T, seed, rank)
    if split == "val" and data.val_sft_source == "wikitext":
        return PretrainBatches({"wikitext": PretrainReader.open(data.cache_dir, "wikitext", "val", tok)}, {"wikitext": 1.0}, batch_size, T, seed, rank)
    readers = {n: SFTReader.open(data.cache_dir, n, split, tok) for n in data.mix_sft}
    return SFTBatches(readers, data.mix_sft, batch_size, T, seed, rank, pad_id=tok.eot_id)


def checkpoint_state(model, optimizer, scaler, step, batches, settings, raw_overrides, tok, phase, run_id, best_val, tokens_seen) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "phase": phase,
        "step": step,
        "model": model.state_dict(),
        "model_config": settings.model.model_dump(mode="json"),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "sampler": batches.state_dict(),
        "settings": settings.model_dump(mode="json"),
        "overrides": raw_overrides,
        "tokenizer_sha256": tok.sha256,
        "tokenizer_model": tok.proto,  # the spm.model bytes: a checkpoint chats without any other file
        "run_id": run_id,
        "best_val": best_val,
        "tokens_seen": tokens_seen,
    }


def run_phase(
    settings: Settings,
    phase: str,
    *,
    raw_overrides: dict | None = None,
    resume: str | Path | None = None,
    no_resume: bool = False,
    init_from: str | Path | None = None,
    run_id: str | None = None,
    show: bool = True,
) -> PhaseResult:
    cfg: TrainSettings = getattr(settings, phase)
    info, device = distributed.setup(resolve_device(cfg.device))
    retain_freed_memory()  # every step reallocates what the last one freed: keep it off the OS page allocator
    precision = resolve_precision(device, cfg.amp, cfg.amp_dtype)
    autocast = autocast_factory(device, precision)
    is_main = info.is_main

    # ---- fail fast: caches, tokenizer, checkpoints -------------------------------------------------
    tok, have_sft_val = check_before_training(settings, phase)
    ckpts = CheckpointManager(settings.checkpoints_dir, phase, cfg.keep_last)
    resume_path = resolve_resume(ckpts.dir, resume, no_resume)
    state = None
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        check_same_shape(state["model_config"], settings.model.model_dump(), resume_path)
        if state["tokenizer_sha256"] != tok.sha256:
            raise CheckpointError(f"{resume_path} was trained with tokenizer {state['tokenizer_sha256']}, current is {tok.sha256}.")
    init_state = None
    if state is None and init_from is not None:
        init_state = load_checkpoint(init_from)
        check_same_shape(init_state["model_config"], settings.model.model_dump(), init_from)
        if init_state["tokenizer_sha256"] != tok.sha256:
            raise CheckpointError(f"{init_from} was trained with tokenizer {init_state['tokenizer_sha256']}, current is {tok.sha256}.")

    # ---- build ---------------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)
    model = GPT(settings.model).to(device)
    model.activation_checkpointing = cfg.activation_checkpointing
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    scaler = torch.amp.GradScaler(device.type) if precision.use_grad_scaler else None
    batches = make_batches(settings, tok, phase, "train", cfg.micro_batch, cfg.seed, info.rank)
    start_step, best_val, tokens_seen = 0, math.inf, 0
    run_id = run_id or time.strftime(f"%Y%m%d-%H%M%S-{phase}")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start_step, tokens_seen = state["step"], state["tokens_seen"]
        best_val = state["best_val"] if state["best_val"] is not None else math.inf
        run_id = state["run_id"]
    elif init_state is not None:
        model.load_state_dict(init_state["model"])
    train_model = torch.compile(model) if cfg.compile else model
    if info.enabled:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    token_bytes = torch.from_numpy(tok.token_byte_lengths()).to(device)
    # Val samplers are built now (a bad val cache fails before step 0) and rewound before each eval.
    eval_sets = {"val_pretrain_loss": make_batches(settings, tok, "pretrain", "val", cfg.micro_batch, EVAL_SEED, 0)}
    if have_sft_val:
        eval_sets["val_sft_loss"] = make_batches(settings, tok, "sft", "val", cfg.micro_batch, EVAL_SEED, 0)
    eval_start = {key: sampler.state_dict() for key, sampler in eval_sets.items()}
    best_key = "val_pretrain_loss" if phase == "pretrain" else "val_sft_loss"

    tokens_per_step = cfg.micro_batch * settings.model.seq_len * cfg.accum_steps * info.world_size
    flops_per_token = model.flops_per_token()
    peak = cached_matmul_peak(device, precision.dtype or torch.float32)
    run_dir = Path(settings.runs_dir) / run_id
    plan = TrainingPlan.build(settings, phase, device, precision, info, model, tok, tokens_per_step, start_step, resume_path, init_from, run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "resolved_settings.json", settings_json(settings))
        if show:
            print_plan(plan)
    log = MetricsLog(run_dir) if is_main else None
    max_time = parse_duration(cfg.max_time)

    # ---- train ----------------------------------------------------------------------------------------
    def save(step_done: int, best: bool = False) -> Path:
        st = checkpoint_state(model, optimizer, scaler, step_done, batches, settings, raw_overrides or {}, tok, phase, run_id,
                              None if math.isinf(best_val) else best_val, tokens_seen)
        return ckpts.save_best(st) if best else ckpts.save_periodic(step_done, st)

    def evaluate(step_done: int) -> dict:
        metrics = {}
        for key, sampler in eval_sets.items():
            sampler.load_state_dict(eval_start[key])
            loss, bpb = eval_losses(model, sampler.next, cfg.eval_batches, device, autocast,
                                    token_bytes if key == "val_pretrain_loss" else None)
            metrics[key] = loss
            if bpb is not None:
                metrics["val_bpb"] = bpb
        return metrics

    latest_path = best_path = None
    last_metrics: dict = {}
    t_start = time.perf_counter()
    progress = TrainProgress(cfg.total_steps, start_step, enabled=is_main and show)
    step = start_step
    train_model.train()
    with progress:
        if start_step == 0 and is_main:  # the curves start where the model starts
            log.write(phase, 0, **evaluate(0))
        distributed.barrier(info)
        while step < cfg.total_steps:
            t0 = time.perf_counter()
            lr = lr_at_step(step, cfg.total_steps, base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr=cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.accum_steps):
                x, y, doc_ids = batches.next()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                doc_ids = None if doc_ids is None else doc_ids.to(device, non_blocking=True)
                last = micro == cfg.accum_steps - 1
                sync = contextlib.nullcontext() if (last or not info.enabled) else train_model.no_sync()
                with sync:
                    with autocast():
                        _, loss = train_model(x, y, logits="none", doc_ids=doc_ids)
                    loss = loss / cfg.accum_steps
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach().item()
            train_loss = distributed.mean_across_ranks(loss_sum, info, device)
            if not math.isfinite(train_loss):
                good = ckpts.dir / "latest.pt"
                raise TrainingDiverged(
                    f"{phase}: train loss is {train_loss} at step {step}; stopped without saving. Last good checkpoint: "
                    f"{good if good.is_file() else 'none'}. Lower the learning rate ({phase}.lr={cfg.lr}) or check the data."
                )
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step += 1
            tokens_seen += tokens_per_step
            dt = time.perf_counter() - t0
            tps = tokens_per_step / dt
            mfu = flops_per_token * tps / peak if peak else None
            if is_main:
                log.write(phase, step, train_loss=train_loss, lr=lr, tokens_per_s=tps, mfu=mfu, tokens=tokens_seen)
                progress.update(step, train_loss, lr, tps, mfu)

            elapsed = time.perf_counter() - t_start
            out_of_budget = (cfg.max_tokens is not None and tokens_seen >= cfg.max_tokens) or (
                max_time is not None and elapsed >= max_time
            )
            stop = distributed.any_rank(out_of_budget, info, device) or step >= cfg.total_steps
            if is_main and (step % cfg.ckpt_every == 0 or stop):
                latest_path = save(step)
            if step % cfg.eval_every == 0 or stop:
                if is_main:
                    last_metrics = evaluate(step)
                    log.write(phase, step, **last_metrics)
                    progress.note_eval(last_metrics)
                    if last_metrics.get(best_key, math.inf) < best_val:
                        best_val = last_metrics[best_key]
                        best_path = save(step, best=True)
                distributed.barrier(info)
            if stop:
                break

    final = {"step": step, "tokens": tokens_seen, "train_loss": train_loss if step > start_step else None, **last_metrics}
    if is_main:
        write_report(run_dir, f"ngpt {phase} — {run_id}", plan.tables(), {k: v for k, v in final.items() if v is not None})
    distributed.teardown(info)
    return PhaseResult(phase, step, run_dir, latest_path, best_path or (ckpts.dir / "best.pt" if (ckpts.dir / "best.pt").is_file() else None), final)
