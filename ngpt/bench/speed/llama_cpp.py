"""The llama.cpp side of `ngpt bench speed --decode --compare llama.cpp`, and the machine's decode limit.

    ngpt bench speed --decode --compare llama.cpp            # ngpt int8 vs llama.cpp q8_0, same weights

The benchmark's random model is written to a temporary GGUF file by ngpt.export.gguf (the same
tensors `ngpt export gguf` writes, with an ids-only vocabulary: the prompt is random ids), in the
format matching ours (LLAMA_CPP_DTYPES: q8_0 for int8, whose blocks of 32 weights carry one f16
scale each, against ngpt's one bf16 scale per row), and loaded by llama-cpp-python with llama.cpp's
defaults (f16 KV cache, no flash attention: what `llama-cli` and ollama run) on torch's thread
count. A run is `Llama.generate` at temperature 0 (greedy) for exactly n tokens after a reset, so
no prompt prefix is reused between runs; its first token's time is its prefill.

Batch-1 decoding reads every weight matrix once per token, so its ceiling on a machine is read
bandwidth / weight bytes per token. `read_bandwidth` measures the bandwidth here, over a buffer as
large as the weights (whatever cache level holds them, the buffer sits in the same one), and
`weight_bytes_per_token` counts what each implementation's matmuls read per token (the embedding
lookup reads one row, so an embedding table counts only where it is also the head). The KV cache
is not counted: at 256 + 256 tokens it is a few MB a token against tens of MB of weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ngpt.export.gguf import ids_only_vocab, write_gguf
from ngpt.kernels.onednn import Linear
from ngpt.model import RMSNorm
from ngpt.quantize import Int8Linear
from ngpt.settings import ModelSettings

if TYPE_CHECKING:
    from ngpt.bench.speed.decode import DecodeTiming

# ngpt's decode weight format → the GGUF dtype llama.cpp decodes the same way (int8 rows ~ q8_0 blocks).
LLAMA_CPP_DTYPES = {"int8": "q8_0", "fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@dataclass(frozen=True)
class ReadBandwidth:
    bytes_per_s: float
    buffer_bytes: int

    def to_json(self) -> dict:
        return {"read_gb_per_s": float(f"{self.bytes_per_s / 1e9:.4g}"), "buffer_bytes": self.buffer_bytes}


def read_bandwidth(nbytes: int, repeats: int = 20) -> ReadBandwidth:
    """Bytes/s of summing an fp32 buffer of `nbytes` on torch's threads (the best of `repeats`, after one warm-up).

    A sum does one add per 4 bytes read, far below what the vector units could do: the reads are the limit.
    """
    buf = torch.ones(max(nbytes, 1 << 20) // 4, dtype=torch.float32)
    buf.sum()  # page in, warm the caches as decoding's second token finds them
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return ReadBandwidth(buf.numel() * 4 / best, buf.numel() * 4)


@dataclass(frozen=True)
class DecodeLimit:
    """The ceiling of batch-1 decoding here: read bandwidth over each implementation's weight bytes per token."""

    bandwidth: ReadBandwidth
    bytes_per_token: dict[str, int]  # "ngpt", "llama.cpp" → bytes

    def tokens_per_s(self, name: str) -> float:
        return self.bandwidth.bytes_per_s / self.bytes_per_token[name]

    def share(self, name: str, timing: DecodeTiming) -> float:
        """The decode rate after the prefill (the whole run's without a prefill time) over the ceiling."""
        return (timing.decode_tokens_per_s or timing.tokens_per_s) / self.tokens_per_s(name)

    def to_json(self, timings: dict[str, DecodeTiming]) -> dict:
        return {**self.bandwidth.to_json(), **{
            name: {"weight_bytes_per_token": n, "limit_tokens_per_s": round(self.tokens_per_s(name), 1),
                   "share": float(f"{self.share(name, timings[name]):.4g}")}
            for name, n in self.bytes_per_token.items()}}


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes ngpt's matmuls read per decoded token: every matrix (int8 ones with their scales) and norm gain, once."""
    tensors: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, Int8Linear):
            parts = [module.weight, module.scale]
        elif isinstance(module, (Linear, nn.Linear, RMSNorm)) and module.weight is not None:
            parts = [module.weight]  # a tied head is the embedding table: read whole, counted once here
        else:
            continue
        tensors.update({t.data_ptr(): t for t in parts})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes llama.cpp's matmuls read per token from a GGUF file: every tensor, but token_embd only as the head."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight")  # looked up one row at a time
    return sum(tensors.values())


def import_llama_cpp():
    try:
        import gguf  # noqa: F401  (the writer's package; the message names both)
        from llama_cpp import Llama
    except ImportError as e:
        raise RuntimeError(
            f"--compare llama.cpp needs llama-cpp-python and gguf, which are not importable here ({e}). Install the "
            "extra: CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON\" pip install -e \".[gguf]\" "
            "(see README, Sharing models), or drop --compare."
        ) from None
    return Llama


@dataclass
class LlamaCppGenerator:
    """llama.cpp holding the GGUF export of a model; `run(n)` generates n greedy tokens, returns the prefill ms."""

    path: Path
    dtype: str
    bytes_per_token: int
    version: str
    llm: object

    def run(self, prompt: list[int], n: int) -> float:
        self.llm.reset()  # n_tokens = 0: generate() finds no cached prefix, so every run prefills the whole prompt
        t0 = time.perf_counter()
        tokens = self.llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=False)
        next(tokens)
        prefill_ms = 1e3 * (time.perf_counter() - t0)
        for _ in range(n - 1):
            next(tokens)
        tokens.close()
        return prefill_ms

    def runner(self, prompt: list[int]) -> Callable[[int], float]:
        return lambda n: self.run(prompt, n)

    def close(self) -> None:
        self.llm.close()


def build_llama_cpp_generator(model_sd: dict[str, torch.Tensor], cfg: ModelSettings, precision: str, n_ctx: int,
                              workdir: Path) -> LlamaCppGenerator:
    """Write `model_sd` (fp32, ngpt's names) as GGUF in `workdir` in the dtype matching `precision`, and load it."""
    Llama = import_llama_cpp()
    import llama_cpp

    dtype = LLAMA_CPP_DTYPES[precision]
    path = workdir / f"bench-{dtype}.gguf"
    write_gguf(path, model_sd, cfg, ids_only_vocab(cfg.vocab_size), dtype, name="ngpt-bench")
    threads = torch.get_num_threads()
    llm = Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    return LlamaCppGenerator(path, dtype, gguf_bytes_per_token(path), llama_cpp.__version__, llm)

