"""The one training loop, shared by pretrain and SFT.

    result = run_phase(settings, "pretrain")                # ngpt train pretrain
    run_phase(settings, "sft", init_from=result.best)       # ngpt train sft / pipeline

run_phase is three steps, as litgpt's: `load_start_state` (check caches and tokenizer, pick and load
the checkpoint to resume or initialise from) → `build` (model, optimizer, batches, eval sets, the
plan; restore the resumed state) → `fit` (train). Each optimizer step accumulates `accum_steps`
micro-batches (DDP syncs gradients only on the last), clips to grad_clip and follows the schedule
(ngpt.train.step). Every `ckpt_every` steps it saves latest/step_N (before eval, so an eval crash
loses nothing); every `eval_every` steps it measures the val losses and saves best.pt when this
phase's val loss improved. A NaN/inf loss stops the run at once, naming the step, without saving
over good checkpoints.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ngpt.batches import PretrainBatches, SFTBatches
from ngpt.checkpoint import CheckpointError, check_same_shape, load_checkpoint
from ngpt.device import Precision, cached_matmul_peak, resolve_device, resolve_precision
from ngpt.io_utils import atomic_write_text
from ngpt.kernels.memory import retain_freed_memory
from ngpt.model import GPT
from ngpt.settings import Settings, TrainSettings, parse_duration, settings_json
from ngpt.tokcache.reader import PretrainReader, SFTReader
from ngpt.tokenizer import Tokenizer
from ngpt.train import distributed
from ngpt.train.checkpoint import CheckpointManager, checkpoint_state, resolve_resume, rng_state, set_rng_state
from ngpt.train.compile_policy import CompilePolicy, compile_signature, load_record, save_record
from ngpt.train.evaluate import eval_losses
from ngpt.train.muon import MuonWithAdamW
from ngpt.train.optim import make_optimizer, scaled_lrs, set_group_lrs, set_muon_momentum
from ngpt.train.plan import TrainingPlan, print_plan
from ngpt.train.preflight import check_before_training
from ngpt.train.progress import TrainProgress
from ngpt.metrics import MetricsLog
from ngpt.train.report import write_report
from ngpt.train.schedule import budget_progress, lr_factor, muon_momentum, seconds_left
from ngpt.train.step import accumulate_gradients, autocast_factory, optimizer_step

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


# ---------------------------------------------------------------------------------------------
# 1. Where the phase starts: checked inputs and the checkpoint to continue or initialise from.


@dataclass
class StartState:
    tok: Tokenizer
    have_sft_val: bool  # whether val_sft_loss can be computed (the SFT caches exist)
    ckpts: CheckpointManager
    resume_path: Path | None = None
    resumed: dict | None = None  # the checkpoint resumed from: weights, optimizer, RNG, sampler...
    init_from: Path | None = None
    init_weights: dict | None = None  # the weights a fresh run starts from (SFT: pretrain's best.pt)


def load_start_state(settings: Settings, phase: str, resume, no_resume: bool, init_from) -> StartState:
    """Fail fast (caches, tokenizer, checkpoint shapes and tokenizer), then load the start checkpoint."""
    cfg: TrainSettings = getattr(settings, phase)
    tok, have_sft_val = check_before_training(settings, phase)
    start = StartState(tok, have_sft_val, CheckpointManager(settings.checkpoints_dir, phase, cfg.keep_last))
    start.resume_path = resolve_resume(start.ckpts.dir, resume, no_resume)
    if start.resume_path is not None:
        start.resumed = _load_compatible(start.resume_path, settings, tok)
        _check_same_optimizer(start.resumed, cfg, phase, start.resume_path)
    elif init_from is not None:
        start.init_from = Path(init_from)
        start.init_weights = _load_compatible(init_from, settings, tok)["model"]
    return start


def _load_compatible(path, settings: Settings, tok: Tokenizer) -> dict:
    state = load_checkpoint(path)
    check_same_shape(state["model_config"], settings.model.model_dump(), path)
    if state["tokenizer_sha256"] != tok.sha256:
        raise CheckpointError(f"{path} was trained with tokenizer {state['tokenizer_sha256']}, current is {tok.sha256}.")
    return state


def _check_same_optimizer(state: dict, cfg: TrainSettings, phase: str, path: Path) -> None:
    """A resumed run continues the optimizer's state: it must be the same optimizer, its state laid out the same way."""
    # (key, what the checkpoint was trained with, why another value cannot continue it)
    layout = [("optimizer", state.get("optimizer_kind", "adamw"),  # checkpoints from before Muon were all AdamW
               "its optimizer state cannot continue another optimizer")]
    if cfg.optimizer == "muon":
        # Muon Split groups q, k, v and o apart from the whole matrices; checkpoints from before it grouped them whole.
        layout.append(("muon_split_heads", state.get("settings", {}).get(phase, {}).get("muon_split_heads", False),
                       "Muon's state is kept per group of matrices, and that setting groups them differently"))
    for key, saved, why in layout:
        if saved != getattr(cfg, key):
            was, now = (str(v).lower() if isinstance(v, bool) else v for v in (saved, getattr(cfg, key)))
            raise CheckpointError(
                f"{path} was trained with {phase}.{key}={was}, the settings say {now}: {why}. Set {phase}.{key}={was} "
                f"to resume, or start fresh with --no-resume (or --init-from {path} to keep only the weights)."
            )


# ---------------------------------------------------------------------------------------------
# 2. Everything the run trains with.


@dataclass
class Trainer:
    settings: Settings
    phase: str
    cfg: TrainSettings
    info: distributed.DistInfo
    device: torch.device
    precision: Precision
    start: StartState
    model: GPT
    train_model: torch.nn.Module  # the model as called: compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    batches: PretrainBatches | SFTBatches
    eval_sets: dict  # metric key → val sampler, rewound to its start before each evaluation
    run_id: str
    run_dir: Path
    plan: TrainingPlan
    raw_overrides: dict
    tokens_per_step: int  # across ranks and micro-batches
    peak_lrs: dict  # each param group's lr before the schedule (ngpt.train.optim.scaled_lrs)
    start_step: int = 0
    best_val: float = math.inf
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # wall time of the phase so far, over resumes: the time budget's clock
    autocast: Callable = field(init=False)
    eval_start: dict = field(init=False)

    def __post_init__(self) -> None:
        self.autocast = autocast_factory(self.device, self.precision)
        self.eval_start = {key: sampler.state_dict() for key, sampler in self.eval_sets.items()}
        self.token_bytes = torch.from_numpy(self.start.tok.token_byte_lengths()).to(self.device)
        self.best_key = "val_pretrain_loss" if self.phase == "pretrain" else "val_sft_loss"

    def save(self, step_done: int, best: bool = False) -> Path:
        st = checkpoint_state(self.model, self.optimizer, self.scaler, step_done, self.batches, self.settings,
                              self.raw_overrides, self.start.tok, self.phase, self.run_id,
                              None if math.isinf(self.best_val) else self.best_val, self.tokens_seen, self.elapsed_s)
        return self.start.ckpts.save_best(st) if best else self.start.ckpts.save_periodic(step_done, st)

    def evaluate(self) -> dict:
        metrics = {}
        for key, sampler in self.eval_sets.items():
            sampler.load_state_dict(self.eval_start[key])
            loss, bpb = eval_losses(self.model, sampler.next, self.cfg.eval_batches, self.device, self.autocast,
                                    self.token_bytes if key == "val_pretrain_loss" else None)
            metrics[key] = loss
            if bpb is not None:
                metrics["val_bpb"] = bpb
        return metrics


def build(settings: Settings, phase: str, start: StartState, info, device, precision: Precision, raw_overrides: dict,
          run_id: str | None) -> Trainer:
    """Model, optimizer, scaler, samplers and the plan; the resumed (or initial) state restored into them."""
    cfg: TrainSettings = getattr(settings, phase)
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)
    model = GPT(settings.model).to(device)
    model.activation_checkpointing = cfg.activation_checkpointing
    tokens_per_step = cfg.micro_batch * settings.model.seq_len * cfg.accum_steps * info.world_size
    optimizer = make_optimizer(model, cfg, settings.model, device, tokens_per_step)
    scaler = torch.amp.GradScaler(device.type) if precision.use_grad_scaler else None
    batches = make_batches(settings, start.tok, phase, "train", cfg.micro_batch, cfg.seed, info.rank)
    start_step, best_val, tokens_seen, elapsed_s = 0, math.inf, 0, 0.0
    run_id = run_id or time.strftime(f"%Y%m%d-%H%M%S-{phase}")
    if (state := start.resumed) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start_step, tokens_seen, elapsed_s = state["step"], state["tokens_seen"], state.get("elapsed_s", 0.0)
        best_val = state["best_val"] if state["best_val"] is not None else math.inf
        run_id = state["run_id"]
    elif start.init_weights is not None:
        model.load_state_dict(start.init_weights)
    train_model = torch.compile(model) if cfg.compile is True else model  # "auto": fit decides once it has timed steps
    if info.enabled:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    # Val samplers are built now (a bad val cache fails before step 0) and rewound before each eval.
    eval_sets = {"val_pretrain_loss": make_batches(settings, start.tok, "pretrain", "val", cfg.micro_batch, EVAL_SEED, 0)}
    if start.have_sft_val:
        eval_sets["val_sft_loss"] = make_batches(settings, start.tok, "sft", "val", cfg.micro_batch, EVAL_SEED, 0)
    run_dir = Path(settings.runs_dir) / run_id
    peak_lrs = scaled_lrs(cfg, settings.model, tokens_per_step)
    plan = TrainingPlan.build(settings, phase, device, precision, info, model, start.tok, tokens_per_step, peak_lrs,
                              start_step, start.resume_path, start.init_from, run_dir)
    if isinstance(optimizer, MuonWithAdamW) and device.type == "cpu":
        from ngpt.measured import cpu_matmul_dtype

        plan.runtime["newton-schulz"] = f"auto: {cpu_matmul_dtype().summary}"  # what Muon iterates in here
    return Trainer(settings, phase, cfg, info, device, precision, start, model, train_model, optimizer, scaler, batches,
                   eval_sets, run_id, run_dir, plan, raw_overrides, tokens_per_step, peak_lrs, start_step, best_val,
                   tokens_seen, elapsed_s)


# ---------------------------------------------------------------------------------------------
# 3. Training.


def forward_backward(t: Trainer) -> float:
    """One optimizer step's micro-batches through t.train_model; the summed loss (gradients accumulated)."""
    return accumulate_gradients(t.train_model, t.batches.next, accum_steps=t.cfg.accum_steps, autocast=t.autocast,
                                scaler=t.scaler, device=t.device, ddp=t.info.enabled)


def first_compiled_step(t: Trainer, policy: CompilePolicy, eager_model: torch.nn.Module, progress: TrainProgress) -> float:
    """forward_backward with the just-compiled model (the compile happens here). If torch.compile cannot
    build it on this machine (no C++ compiler for inductor, an op it cannot trace), the step is redone
    eager from the same batches and the run stays eager, so it trains exactly as it would have."""
    sampler_before, rng_before = t.batches.state_dict(), rng_state()  # (dropout draws from the RNG)
    try:
        return forward_backward(t)
    except Exception as e:  # noqa: BLE001 — whatever the compiler raised, eager still works
        policy.compile_failed(e)
        progress.note(f"compile auto: {policy.outcome}")
        t.train_model = eager_model
        t.optimizer.zero_grad(set_to_none=True)
        t.batches.load_state_dict(sampler_before)
        set_rng_state(rng_before)
        return forward_backward(t)


def fit(t: Trainer, show: bool = True) -> PhaseResult:
    cfg, info, is_main = t.cfg, t.info, t.info.is_main
    if is_main:
        t.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(t.run_dir / "resolved_settings.json", settings_json(t.settings))
        if show:
            print_plan(t.plan)
    log = MetricsLog(t.run_dir) if is_main else None
    max_time = parse_duration(cfg.max_time)  # already validated at settings load; the clock runs over resumes
    flops_per_token = t.model.flops_per_token()
    peak = cached_matmul_peak(t.device, t.precision.dtype or torch.float32)
    params = [p for p in t.model.parameters() if p.requires_grad]

    latest_path = best_path = None
    last_metrics: dict = {}
    t_start = time.perf_counter() - t.elapsed_s
    progress = TrainProgress(cfg.total_steps, t.start_step, enabled=is_main and show)
    policy = signature = None
    if cfg.compile == "auto":
        signature = compile_signature(t.settings.model.model_dump(), cfg.micro_batch, t.precision.label, t.device.type,
                                      cfg.activation_checkpointing)
        policy = CompilePolicy(load_record(signature))
    eager_model = t.train_model
    step = t.start_step
    t.train_model.train()
    with progress:
        if t.start_step == 0 and is_main:  # the curves start where the model starts
            log.write(t.phase, 0, **t.evaluate())
        distributed.barrier(info)
        while step < cfg.total_steps:
            t0 = time.perf_counter()
            factor = lr_factor(step, budget_progress(step, t.tokens_seen, t0 - t_start, cfg), cfg)
            set_group_lrs(t.optimizer, t.peak_lrs, factor)
            set_muon_momentum(t.optimizer, muon_momentum(step, cfg))
            lr = t.peak_lrs["matrices"] * factor
            if policy is not None and policy.compiling_now:
                loss_sum = first_compiled_step(t, policy, eager_model, progress)
            else:
                loss_sum = forward_backward(t)
            train_loss = distributed.mean_across_ranks(loss_sum, info, t.device)
            if not math.isfinite(train_loss):
                good = t.start.ckpts.dir / "latest.pt"
                raise TrainingDiverged(
                    f"{t.phase}: train loss is {train_loss} at step {step}; stopped without saving. Last good checkpoint: "
                    f"{good if good.is_file() else 'none'}. Lower the learning rate ({t.phase}.lr={cfg.lr}) or check the data."
                )
            optimizer_step(t.optimizer, params, scaler=t.scaler, grad_clip=cfg.grad_clip)
            if t.device.type == "cuda":
                torch.cuda.synchronize(t.device)
            step += 1
            t.tokens_seen += t.tokens_per_step
            dt = time.perf_counter() - t0
            tps = t.tokens_per_step / dt
            mfu = flops_per_token * tps / peak if peak else None
            if is_main:
                log.write(t.phase, step, train_loss=train_loss, lr=lr, tokens_per_s=tps, mfu=mfu, tokens=t.tokens_seen)
                progress.update(step, train_loss, lr, tps, mfu)

            t.elapsed_s = time.perf_counter() - t_start
            if policy is not None and policy.watching:
                # Every rank decides on the same numbers (the mean over ranks), so all compile or none.
                step_s = distributed.mean_across_ranks(dt, info, t.device)
                action = policy.observe(step_s, lambda eager_s: distributed.mean_across_ranks(
                    seconds_left(step, t.tokens_seen, t.elapsed_s, eager_s, t.tokens_per_step, cfg), info, t.device))
                if action == "compile":
                    t.train_model = torch.compile(eager_model)
                elif action == "eager":
                    t.train_model = eager_model
                if not policy.watching or action == "compile":
                    progress.note(f"compile auto: {policy.outcome}")
            if policy is not None and (record := policy.take_measured()) is not None and is_main:
                save_record(signature, record)  # what the next run of this model on this machine decides with
            out_of_budget = (cfg.max_tokens is not None and t.tokens_seen >= cfg.max_tokens) or (
                max_time is not None and t.elapsed_s >= max_time
            )
            stop = distributed.any_rank(out_of_budget, info, t.device) or step >= cfg.total_steps
            if is_main and (step % cfg.ckpt_every == 0 or stop):
                latest_path = t.save(step)
            if step % cfg.eval_every == 0 or stop:
                if is_main:
                    last_metrics = t.evaluate()
                    log.write(t.phase, step, **last_metrics)
                    progress.note_eval(last_metrics)
                    if last_metrics.get(t.best_key, math.inf) < t.best_val:
                        t.best_val = last_metrics[t.best_key]
                        best_path = t.save(step, best=True)
                distributed.barrier(info)
            if stop:
                break

    final = {"step": step, "tokens": t.tokens_seen, "train_loss": train_loss if step > t.start_step else None, **last_metrics}
    if policy is not None:
        t.plan.runtime["compile"] = f"auto: {policy.outcome}"  # the report says what was decided
    if is_main:
        write_report(t.run_dir, f"ngpt {t.phase} — {t.run_id}", t.plan.tables(), {k: v for k, v in final.items() if v is not None})
    best_file = t.start.ckpts.dir / "best.pt"
    return PhaseResult(t.phase, step, t.run_dir, latest_path, best_path or (best_file if best_file.is_file() else None), final)


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
    start = load_start_state(settings, phase, resume, no_resume, init_from)
    trainer = build(settings, phase, start, info, device, precision, raw_overrides or {}, run_id)
    result = fit(trainer, show)
    distributed.teardown(info)
    return result
