"""Training speed: full optimizer steps on synthetic batches (tokens/s, MFU), optionally against transformers.

A step is what the training loop does per optimizer step with one micro-batch: forward under the
resolved autocast, backward (through a GradScaler for fp16), gradient clipping, AdamW step, zero
grads. Batches are synthetic random tokens (seeded), so no dataset or tokenizer is needed. Warm-up
steps (allocator, kernel selection, compilation) are discarded; the device is synchronised around
every timed step. MFU is measured against a matmul peak taken on the spot
(ngpt.device.measure_matmul_peak).

`against=Recipe(...)` (the CLI's `--against CONFIG`) builds a second ngpt model of the same dims with another
config's architecture options and optimizer settings (configs/classic.json: the 2023 recipe) and times
the two step by step in alternation, as below: a recipe's cost measured side by side in one run.

`compare="transformers"` builds the transformers model of the same architecture (ngpt.export.hf:
Llama, Qwen3 or Arcee) and shapes (V, T, C, L, H, d_ff, tied embeddings, rope_theta, rms_norm_eps,
no biases, SDPA attention), trains it with the same AdamW groups, clipping and autocast, and times
the two models step by step in alternation, so a noisy neighbour slows both alike. Both models sit
in memory together.

    from ngpt.bench.speed import SpeedPlan, run_train_speed
    report = run_train_speed(SpeedPlan(model=ModelSettings(), device=dev, precision=prec, compare="transformers"))
    print(report.to_json())
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from ngpt.bench.speed.common import COMPARE_CHOICES, machine, model_dims, speed_ratio, transformers_config
from ngpt.device import MatmulPeak, Precision, measure_matmul_peak, synchronize
from ngpt.kernels.memory import retain_freed_memory
from ngpt.model import GPT
from ngpt.settings import ModelSettings, TrainSettings
from ngpt.train.optim import make_optimizer
from ngpt.train.step import autocast_factory, optimizer_step


@dataclass(frozen=True)
class Recipe:
    """Another config's model options and training settings, timed beside the plan's own (--against)."""

    name: str  # how tables and the JSON record name it: the config's path
    model: ModelSettings
    optim: TrainSettings


@dataclass(frozen=True)
class SpeedPlan:
    """What to time and how; the CLI fills it from settings and flags."""

    model: ModelSettings
    device: torch.device
    precision: Precision
    micro_b: int = 4
    accum_steps: int = 1  # micro-batches per timed optimizer step (the optimizer's own cost is per step)
    warmup_steps: int = 2
    steps: int = 5
    activation_checkpointing: bool = False
    compile: bool = False
    optim: TrainSettings = field(default_factory=TrainSettings)  # optimizer, lrs, clipping: what training steps with
    seed: int = 1337
    compare: str | None = None  # None or one of COMPARE_CHOICES
    against: Recipe | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.micro_b * self.model.seq_len * self.accum_steps

    @property
    def peak_dtype(self) -> torch.dtype:
        """The dtype the model's matmuls run in: the autocast dtype, else fp32."""
        return self.precision.dtype if self.precision.enabled else torch.float32


@dataclass(frozen=True)
class ModelTiming:
    """The timed steps of one model (warm-up excluded)."""

    name: str
    params: int
    flops_per_token: int
    tokens_per_step: int
    step_s: tuple[float, ...]

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def best_step_s(self) -> float:
        return min(self.step_s)

    @property
    def tokens_per_s(self) -> float:
        # The median step: one descheduled step on a shared machine does not move it, as a mean would.
        return self.tokens_per_step / self.median_step_s

    def mfu(self, peak_flops: float) -> float:
        return self.tokens_per_s * self.flops_per_token / peak_flops

    def to_json(self, peak_flops: float) -> dict:
        return {
            "params": self.params,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "step_ms": round(1e3 * self.median_step_s, 3),
            "step_ms_best": round(1e3 * self.best_step_s, 3),
            "mfu": float(f"{self.mfu(peak_flops):.4g}"),  # significant digits: tiny models have tiny MFU
            "flops_per_token": self.flops_per_token,
        }


@dataclass(frozen=True)
class TrainSpeedReport:
    plan: SpeedPlan
    peak: MatmulPeak
    ours: ModelTiming
    transformers: ModelTiming | None = None
    against: ModelTiming | None = None
    extra: dict = field(default_factory=dict)  # versions and the like, for the JSON record

    @property
    def ratio(self) -> float | None:
        """Our tokens/s over transformers' (> 1: ngpt is faster)."""
        return speed_ratio(self.ours, self.transformers)

    @property
    def against_ratio(self) -> float | None:
        """Our tokens/s over the --against recipe's (> 1: this config's recipe steps faster)."""
        return speed_ratio(self.ours, self.against)

    def to_json(self) -> dict:
        p = self.plan
        out = {
            "mode": "train",
            "config": {
                **model_dims(p.model), "micro_b": p.micro_b, "accum_steps": p.accum_steps,
                "tokens_per_step": p.tokens_per_step, "optimizer": p.optim.optimizer,
                "warmup_steps": p.warmup_steps, "steps": p.steps,
                "activation_checkpointing": p.activation_checkpointing, "compile": p.compile,
            },
            **machine(p.device),
            "precision": p.precision.label,
            "peak_flops": round(self.peak.flops_per_s),
            "peak_matmul": {"size": self.peak.size, "dtype": str(self.peak.dtype).removeprefix("torch.")},
            "ours": self.ours.to_json(self.peak.flops_per_s),
            **self.extra,
        }
        if self.transformers is not None:
            out["transformers"] = self.transformers.to_json(self.peak.flops_per_s)
            out["ratio"] = round(self.ratio, 4)
        if self.against is not None:
            out["against"] = {"config": p.against.name, "optimizer": p.against.optim.optimizer,
                              **self.against.to_json(self.peak.flops_per_s)}
            out["against_ratio"] = round(self.against_ratio, 4)
        return out


def synthetic_batch(vocab_size: int, micro_b: int, seq_len: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Random tokens (B, T+1) → inputs (B, T) and next-token targets (B, T); the same for every step."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (micro_b, seq_len + 1), generator=gen)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


class TrainStep:
    """One model's full training step on a fixed batch, as the training loop takes it; call it repeatedly.

    Forward under the autocast training uses, backward (scaled for fp16), then training's own
    optimizer_step (unscale, clip, step, zero) with training's optimizer.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[], Tensor], plan: SpeedPlan) -> None:
        self.loss_fn = loss_fn
        self.autocast = autocast_factory(plan.device, plan.precision)
        self.grad_clip, self.accum_steps = plan.optim.grad_clip, plan.accum_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(model, plan.optim, plan.model, plan.device, plan.tokens_per_step)
        self.scaler = torch.amp.GradScaler(plan.device.type) if plan.precision.use_grad_scaler else None

    def __call__(self) -> None:
        for _ in range(self.accum_steps):
            with self.autocast():
                loss = self.loss_fn() / self.accum_steps
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        optimizer_step(self.opt, self.params, scaler=self.scaler, grad_clip=self.grad_clip)


def time_interleaved(steps: list[TrainStep], warmup: int, n: int, device: torch.device) -> list[tuple[float, ...]]:
    """Run every step `warmup` times untimed, then `n` timed rounds of one step each; seconds per step."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(n):
        for step, ts in zip(steps, times):
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            ts.append(time.perf_counter() - t0)
    return [tuple(ts) for ts in times]


def build_ngpt(plan: SpeedPlan) -> GPT:
    torch.manual_seed(plan.seed)
    model = GPT(plan.model).to(plan.device).train()
    model.activation_checkpointing = plan.activation_checkpointing
    return model



def build_transformers_llama(plan: SpeedPlan) -> nn.Module:
    config = transformers_config(plan.model)  # first: it turns a missing transformers into a readable error
    from transformers import AutoModelForCausalLM

    torch.manual_seed(plan.seed)
    model = AutoModelForCausalLM.from_config(config).to(device=plan.device, dtype=torch.float32).train()
    if plan.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def run_train_speed(plan: SpeedPlan) -> TrainSpeedReport:
    """Measure the matmul peak, then time ngpt (and the comparison model) on synthetic batches."""
    if plan.compare is not None and plan.compare not in COMPARE_CHOICES:
        raise ValueError(f"--compare {plan.compare!r} is not known; choose one of: {', '.join(COMPARE_CHOICES)}")
    if plan.compare == "llama.cpp":
        raise ValueError("--compare llama.cpp times generation only (llama.cpp does not train); use it with --decode")
    retain_freed_memory()  # as the training loop does (process-wide, so the comparison model gets it too)
    peak = measure_matmul_peak(plan.device, plan.peak_dtype)
    idx, targets = synthetic_batch(plan.model.vocab_size, plan.micro_b, plan.model.seq_len, plan.seed, plan.device)

    ours = build_ngpt(plan)
    ours_fwd = torch.compile(ours) if plan.compile else ours
    steps = [TrainStep(ours, lambda: ours_fwd(idx, targets, logits="none")[1], plan)]
    models: list[nn.Module] = [ours]
    extra = {"torch": torch.__version__}
    if plan.compare == "transformers":
        hf = build_transformers_llama(plan)
        import transformers

        hf_fwd = torch.compile(hf) if plan.compile else hf
        # transformers shifts labels itself: labels are the inputs, as in its own training scripts.
        steps.append(TrainStep(hf, lambda: hf_fwd(input_ids=idx, labels=idx).loss, plan))
        models.append(hf)
        extra["transformers_version"] = transformers.__version__
    names = ["ngpt"] + (["transformers"] if plan.compare == "transformers" else [])
    if plan.against is not None:
        other_plan = replace(plan, model=plan.against.model, optim=plan.against.optim, compare=None, against=None)
        other = build_ngpt(other_plan)
        other_fwd = torch.compile(other) if plan.compile else other
        steps.append(TrainStep(other, lambda: other_fwd(idx, targets, logits="none")[1], other_plan))
        models.append(other)
        names.append("against")

    times = dict(zip(names, time_interleaved(steps, plan.warmup_steps, plan.steps, plan.device)))
    # transformers' twin has ngpt's shapes, so ngpt's formula counts its FLOPs too; another recipe counts its own.
    flops = {name: (m if isinstance(m, GPT) else ours).flops_per_token(plan.model.seq_len) for name, m in zip(names, models)}
    timings = {name: ModelTiming(name, sum(p.numel() for p in m.parameters()), flops[name], plan.tokens_per_step, times[name])
               for name, m in zip(names, models)}
    return TrainSpeedReport(plan, peak, timings["ngpt"], transformers=timings.get("transformers"),
                            against=timings.get("against"), extra=extra)


