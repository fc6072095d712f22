"""Speed: training steps (tokens/s, MFU) and generation (decode tokens/s), optionally against transformers.

Training (`run_train_speed`). A step is what the training loop does per optimizer step with one
micro-batch: forward under the resolved autocast, backward (through a GradScaler for fp16), gradient
clipping, AdamW step, zero grads. Batches are synthetic random tokens (seeded), so no dataset or
tokenizer is needed. Warm-up steps (allocator, kernel selection, compilation) are discarded; the
device is synchronised around every timed step. MFU is measured against a matmul peak taken on the
spot (ngpt.device.measure_matmul_peak).

`compare="transformers"` builds the transformers model of the same architecture (ngpt.export.hf: Llama, Qwen3 or Arcee) and shapes (V, T, C, L, H, d_ff, tied
embeddings, rope_theta, rms_norm_eps, no biases, SDPA attention), trains it with the same AdamW
groups, clipping and autocast, and times the two models step by step in alternation, so a noisy
neighbour slows both alike. Both models sit in memory together.

    from ngpt.bench.speed import SpeedPlan, run_train_speed
    report = run_train_speed(SpeedPlan(model=ModelSettings(), device=dev, precision=prec, compare="transformers"))
    print(report.to_json())

Decoding (`run_decode_speed`). Batch 1, greedy, a random prompt of `prompt_tokens` ids, exactly
`new_tokens` generated (random weights would pick an end token at a random step, so none is set).
Tokens/s = new tokens / wall time of the whole generation (prefill included), as a user waits for
it; prefill time and the decode-only rate are reported beside it. Our engine runs with its KV cache
and (unless `uncached=False`) without it, and with `compare="transformers"` transformers'
`LlamaForCausalLM.generate` runs the same shapes in the same weight dtype (bf16 when ours is int8);
all runs alternate.

    report = run_decode_speed(DecodePlan(model=ModelSettings(), device=dev, precision=decode_precision(dev)))
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import get_args

import torch
from torch import Tensor, nn

from ngpt.device import DTYPES, MatmulPeak, Precision, device_name, dtype_name, measure_matmul_peak, synchronize
from ngpt.export.hf import hf_fields, hf_model_type
from ngpt.inference import NO_AUTOCAST, WEIGHT_LABELS, prepare_for_decoding
from ngpt.kernels.memory import retain_freed_memory
from ngpt.model import GPT, param_count
from ngpt.settings import ModelSettings, SpeedCompare, TrainSettings
from ngpt.train.optim import make_optimizer
from ngpt.train.step import autocast_factory, optimizer_step

COMPARE_CHOICES = get_args(SpeedCompare)


def model_dims(cfg: ModelSettings) -> dict:
    """The model's shapes: the first keys of the "config" record of both speed reports."""
    return {
        "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "d_ff": cfg.ffn_dim,
    }


def machine(device: torch.device) -> dict:
    """Where a speed report was measured: the device, its name and torch's CPU threads."""
    return {"device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads()}


def speed_ratio(ours: ModelTiming | DecodeTiming, other: ModelTiming | DecodeTiming | None) -> float | None:
    """Our tokens/s over `other`'s (> 1: ours is faster); None when `other` was not timed."""
    return None if other is None else ours.tokens_per_s / other.tokens_per_s


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
    extra: dict = field(default_factory=dict)  # versions and the like, for the JSON record

    @property
    def ratio(self) -> float | None:
        """Our tokens/s over transformers' (> 1: ngpt is faster)."""
        return speed_ratio(self.ours, self.transformers)

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


def transformers_config(cfg: ModelSettings):
    """The transformers config of exactly ngpt's model (Llama, Qwen3 or Arcee: ngpt.export.hf; RuntimeError without transformers)."""
    try:
        from transformers import AutoConfig
    except ImportError as e:
        raise RuntimeError(
            "--compare transformers needs the `transformers` package, which is not importable here "
            f"({e}). Install it (pip install transformers) or drop --compare."
        ) from None
    # use_cache off: training builds no KV cache in forward, as in ngpt
    return AutoConfig.for_model(hf_model_type(cfg), **hf_fields(cfg), use_cache=False, attn_implementation="sdpa")


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

    times = time_interleaved(steps, plan.warmup_steps, plan.steps, plan.device)
    # Same shapes, so the same FLOPs per token: count them once, with ngpt's formula, for both.
    flops = ours.flops_per_token(plan.model.seq_len)
    timings = [
        ModelTiming(name, sum(p.numel() for p in m.parameters()), flops, plan.tokens_per_step, ts)
        for name, m, ts in zip(("ngpt", "transformers"), models, times)
    ]
    return TrainSpeedReport(plan, peak, timings[0], timings[1] if len(timings) > 1 else None, extra)


# ---------------------------------------------------------------------------------------------
# Decoding.

@dataclass(frozen=True)
class DecodePlan:
    """What to generate and how often; the CLI fills it from settings and flags."""

    model: ModelSettings
    device: torch.device
    precision: str  # how our weights are stored: fp32 | bf16 | fp16 | int8 (see inference.choose_weights)
    prompt_tokens: int = 256
    new_tokens: int = 256
    repeats: int = 3
    uncached: bool = True  # also time --no-kv-cache generation (recomputes the whole sequence per token)
    seed: int = 1337
    compare: str | None = None  # None or one of COMPARE_CHOICES

    @property
    def transformers_dtype(self) -> torch.dtype:
        """The comparison's weight dtype: ours, or for int8 bf16 (transformers' fastest on such CPUs, and
        the dtype our int8 matmuls take their inputs in)."""
        return DTYPES["bf16" if self.precision == "int8" else self.precision]

    def check(self) -> None:
        """ValueError naming the flag, before any model is built."""
        if self.compare is not None and self.compare not in COMPARE_CHOICES:
            raise ValueError(f"--compare {self.compare!r} is not known; choose one of: {', '.join(COMPARE_CHOICES)}")
        if self.prompt_tokens < 1 or self.new_tokens < 1 or self.repeats < 1:
            raise ValueError("--prompt-tokens, --new-tokens and --repeats must each be at least 1")
        if self.prompt_tokens + self.new_tokens > self.model.seq_len:
            raise ValueError(
                f"--prompt-tokens {self.prompt_tokens} + --new-tokens {self.new_tokens} = "
                f"{self.prompt_tokens + self.new_tokens} exceeds the context --seq-len {self.model.seq_len}; "
                "lower one of them or raise --seq-len"
            )


class SyntheticTokenizer:
    """What Engine needs of a tokenizer for random ids: the vocabulary size, no end token, no text.

    The benchmark times the model and the engine (forward, sampling, cache); random ids have no text
    worth detokenizing, and no eot id means every run makes exactly `new_tokens`.
    """

    path = "synthetic ids"
    eot_id = -1  # matches no id: generation always runs to max_new_tokens

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def decode(self, ids: list[int]) -> str:
        return ""


@dataclass(frozen=True)
class DecodeTiming:
    """Timed generations of one implementation (warm-up excluded)."""

    name: str
    new_tokens: int
    run_s: tuple[float, ...]  # wall time of each whole generation
    prefill_ms: tuple[float, ...] = ()  # ours only: the first step (prompt forward + first token)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / statistics.median(self.run_s)  # median: robust to a descheduled run

    @property
    def decode_tokens_per_s(self) -> float | None:
        """The tokens after the first over the time after the first step (medians); None without prefill times."""
        if not self.prefill_ms or self.new_tokens < 2:
            return None
        return (self.new_tokens - 1) / (statistics.median(self.run_s) - statistics.median(self.prefill_ms) / 1e3)

    def to_json(self) -> dict:
        out = {
            "tokens_per_s": round(self.tokens_per_s, 2),
            "run_s": round(statistics.median(self.run_s), 6),
            "run_s_best": round(min(self.run_s), 6),
        }
        if self.prefill_ms:
            out["prefill_ms"] = round(statistics.median(self.prefill_ms), 3)
            decode = self.decode_tokens_per_s
            out["decode_tokens_per_s"] = None if decode is None else round(decode, 2)
        return out


@dataclass(frozen=True)
class DecodeSpeedReport:
    plan: DecodePlan
    params: int
    ours: DecodeTiming
    uncached: DecodeTiming | None = None
    transformers: DecodeTiming | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kv_cache_speedup(self) -> float | None:
        """Tokens/s with the KV cache over tokens/s without it."""
        return speed_ratio(self.ours, self.uncached)

    @property
    def ratio(self) -> float | None:
        """Our tokens/s over transformers' generate (> 1: ngpt is faster)."""
        return speed_ratio(self.ours, self.transformers)

    def to_json(self) -> dict:
        p = self.plan
        out = {
            "mode": "decode",
            "config": {
                **model_dims(p.model), "batch_size": 1, "sampling": "greedy",
                "prompt_tokens": p.prompt_tokens, "new_tokens": p.new_tokens, "repeats": p.repeats,
            },
            "params": self.params,
            **machine(p.device),
            "precision": WEIGHT_LABELS[p.precision],
            "ours": self.ours.to_json(),
            **self.extra,
        }
        if self.uncached is not None:
            out["ours_no_kv_cache"] = self.uncached.to_json()
            out["kv_cache_speedup"] = round(self.kv_cache_speedup, 3)
        if self.transformers is not None:
            out["transformers"] = {**self.transformers.to_json(), "dtype": dtype_name(p.transformers_dtype)}
            out["ratio"] = round(self.ratio, 4)
        return out


def build_transformers_generator(plan: DecodePlan, prompt: Tensor) -> Callable[[int], None]:
    """transformers' Llama of the plan's shapes in plan.transformers_dtype; the callable generates n greedy tokens."""
    config = transformers_config(plan.model)  # first: it turns a missing transformers into a readable error
    from transformers import AutoModelForCausalLM, GenerationConfig

    config.use_cache = True  # transformers_config is for training; generation uses its KV cache
    torch.manual_seed(plan.seed)
    model = AutoModelForCausalLM.from_config(config).to(device=plan.device, dtype=plan.transformers_dtype).eval()
    # No eos id: like ours, every run makes exactly n tokens (and no min-length processor is needed).
    model.generation_config = GenerationConfig(do_sample=False, pad_token_id=0, eos_token_id=None, use_cache=True)
    mask = torch.ones_like(prompt)

    def generate(n: int) -> None:
        out = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n)
        if out.shape[1] != prompt.shape[1] + n:
            raise RuntimeError(f"transformers generated {out.shape[1] - prompt.shape[1]} tokens, expected {n}")

    return generate


def run_decode_speed(plan: DecodePlan) -> DecodeSpeedReport:
    """Time greedy batch-1 generation: ours with and without the KV cache, and transformers if asked."""
    from ngpt.engine import Engine  # the engine is only needed here
    from ngpt.sampling import SamplingParams

    plan.check()
    torch.manual_seed(plan.seed)
    model = GPT(plan.model)
    params = model.num_params()  # before int8 turns weights into buffers
    model = prepare_for_decoding(model, plan.precision).to(plan.device).eval()
    tok = SyntheticTokenizer(plan.model.vocab_size)
    gen = torch.Generator().manual_seed(plan.seed)
    prompt = torch.randint(0, plan.model.vocab_size, (1, plan.prompt_tokens), generator=gen)
    ids = prompt[0].tolist()

    def ours(engine: Engine) -> Callable[[int], float]:
        def run(n: int) -> float:
            return engine.generate(ids, SamplingParams(max_new_tokens=n, temperature=0)).prefill_ms

        return run

    runs: dict[str, Callable[[int], float | None]] = {"ngpt": ours(Engine(model, tok, plan.device, NO_AUTOCAST))}
    if plan.uncached:
        runs["ngpt --no-kv-cache"] = ours(Engine(model, tok, plan.device, NO_AUTOCAST, use_kv_cache=False))
    extra = {"torch": torch.__version__}
    if plan.compare == "transformers":
        runs["transformers"] = build_transformers_generator(plan, prompt.to(plan.device))
        import transformers

        extra["transformers_version"] = transformers.__version__

    for run in runs.values():  # warm-up: allocator, kernel selection, the full prompt once
        run(min(2, plan.new_tokens))
    run_s: dict[str, list[float]] = {name: [] for name in runs}
    prefill_ms: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(plan.repeats):  # rounds in alternation: a noisy neighbour slows every implementation alike
        for name, run in runs.items():
            synchronize(plan.device)
            t0 = time.perf_counter()
            prefill = run(plan.new_tokens)
            synchronize(plan.device)
            run_s[name].append(time.perf_counter() - t0)
            if prefill is not None:
                prefill_ms[name].append(prefill)
    timings = {name: DecodeTiming(name, plan.new_tokens, tuple(run_s[name]), tuple(prefill_ms[name])) for name in runs}
    return DecodeSpeedReport(
        plan, params, timings["ngpt"], timings.get("ngpt --no-kv-cache"), timings.get("transformers"), extra
    )
