"""Decoding speed: batch-1 greedy generation (tokens/s), optionally against transformers or llama.cpp.

A random prompt of `prompt_tokens` ids, exactly `new_tokens` generated (random weights would pick
an end token at a random step, so none is set). Tokens/s = new tokens / wall time of the whole
generation (prefill included), as a user waits for it; prefill time and the decode-only rate are
reported beside it. Our engine runs with its KV cache and (unless `uncached=False`) without it;
`compare="transformers"` runs transformers' `generate` on the same shapes in the same weight dtype
(bf16 when ours is int8); `compare="llama.cpp"` runs llama.cpp (llama-cpp-python) on the same
weights exported to GGUF (q8_0 when ours is int8; ngpt.bench.speed.llama_cpp). All runs alternate.

    from ngpt.bench.speed import DecodePlan, run_decode_speed
    report = run_decode_speed(DecodePlan(model=ModelSettings(), device=dev, precision=choose_weights(dev)))
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ngpt.bench.speed.common import COMPARE_CHOICES, machine, model_dims, speed_ratio, transformers_config
from ngpt.bench.speed.llama_cpp import LLAMA_CPP_DTYPES, DecodeLimit, build_llama_cpp_generator, read_bandwidth, weight_bytes_per_token
from ngpt.device import DTYPES, dtype_name, synchronize
from ngpt.inference import NO_AUTOCAST, WEIGHT_LABELS, prepare_for_decoding
from ngpt.model import GPT
from ngpt.settings import ModelSettings


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

    @property
    def llama_cpp_dtype(self) -> str:
        """The GGUF dtype llama.cpp decodes in: ours, and q8_0 for int8 (8-bit weights with f16 scales per 32)."""
        return LLAMA_CPP_DTYPES[self.precision]

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
    prefill_ms: tuple[float, ...] = ()  # ours and llama.cpp's: the first step (prompt forward + first token)

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
    llama_cpp: DecodeTiming | None = None
    limit: DecodeLimit | None = None  # with llama.cpp: read bandwidth here, each one's weight bytes per token
    extra: dict = field(default_factory=dict)

    @property
    def kv_cache_speedup(self) -> float | None:
        """Tokens/s with the KV cache over tokens/s without it."""
        return speed_ratio(self.ours, self.uncached)

    @property
    def ratio(self) -> float | None:
        """Our tokens/s over the compared implementation's (> 1: ngpt is faster)."""
        return speed_ratio(self.ours, self.transformers or self.llama_cpp)

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
        if self.llama_cpp is not None:
            out["llama_cpp"] = {**self.llama_cpp.to_json(), "dtype": p.llama_cpp_dtype}
        if self.limit is not None:
            out["limit"] = self.limit.to_json({"ngpt": self.ours, "llama.cpp": self.llama_cpp})
        if self.ratio is not None:
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
    """Time greedy batch-1 generation: ours with and without the KV cache, and transformers or llama.cpp if asked."""
    from ngpt.engine import Engine  # the engine is only needed here
    from ngpt.sampling import SamplingParams

    plan.check()
    torch.manual_seed(plan.seed)
    model = GPT(plan.model)
    params = model.num_params()  # before int8 turns weights into buffers
    # llama.cpp gets the same weights, from their fp32 values (int8 preparation replaces the modules).
    fp32_weights = {k: v.detach().clone() for k, v in model.state_dict().items()} if plan.compare == "llama.cpp" else {}
    model = prepare_for_decoding(model, plan.precision).to(plan.device).eval()
    tok = SyntheticTokenizer(plan.model.vocab_size)
    gen = torch.Generator().manual_seed(plan.seed)
    prompt = torch.randint(0, plan.model.vocab_size, (1, plan.prompt_tokens), generator=gen)
    ids = prompt[0].tolist()

    def ours(engine: Engine) -> Callable[[int], float]:
        def run(n: int) -> float:
            return engine.generate(ids, SamplingParams.greedy(n)).prefill_ms

        return run

    runs: dict[str, Callable[[int], float | None]] = {"ngpt": ours(Engine(model, tok, plan.device, NO_AUTOCAST))}
    if plan.uncached:
        runs["ngpt --no-kv-cache"] = ours(Engine(model, tok, plan.device, NO_AUTOCAST, use_kv_cache=False))
    extra = {"torch": torch.__version__}
    if plan.compare == "transformers":
        runs["transformers"] = build_transformers_generator(plan, prompt.to(plan.device))
        import transformers

        extra["transformers_version"] = transformers.__version__

    with ExitStack() as stack:
        llama = None
        if plan.compare == "llama.cpp":
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ngpt-bench-gguf-")))
            llama = build_llama_cpp_generator(fp32_weights, plan.model, plan.precision, plan.prompt_tokens + plan.new_tokens, workdir)
            stack.callback(llama.close)
            runs["llama.cpp"] = llama.runner(ids)
            extra["llama_cpp_python_version"] = llama.version
        timings = time_runs(runs, plan)
        limit = None
        if llama is not None:
            per_token = {"ngpt": weight_bytes_per_token(model), "llama.cpp": llama.bytes_per_token}
            limit = DecodeLimit(read_bandwidth(max(per_token.values())), per_token)
    return DecodeSpeedReport(plan, params, timings["ngpt"], timings.get("ngpt --no-kv-cache"), timings.get("transformers"),
                             timings.get("llama.cpp"), limit, extra)


def time_runs(runs: dict[str, Callable[[int], float | None]], plan: DecodePlan) -> dict[str, DecodeTiming]:
    """One short warm-up each, then `plan.repeats` rounds of every run in turn; each run's wall times and prefills."""
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
    return {name: DecodeTiming(name, plan.new_tokens, tuple(run_s[name]), tuple(prefill_ms[name])) for name in runs}
