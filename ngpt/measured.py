"""One-time speed measurements that settle the CPU's "auto" fast paths on the machine at hand.

Which path is faster depends on the CPU model, and the CPU model changes under a checkout (AMD Zen 5,
Zen 4 and an Intel Ice Lake were all seen here). bf16 matmuls run 1.5-2× faster than fp32 where the
CPU has AVX512-BF16 or AMX, and about 3× slower where it has not (Ice Lake, 2 cores: Newton-Schulz
for the 20M model's matrices 1.70 s in bf16, 0.46 s in fp32). Flags name instructions, not speed,
so each CPU "auto" below times its candidates once, side by side, and remembers the winner:

    from ngpt.measured import cpu_matmul_dtype, cpu_training_autocast, cpu_decode_weights
    cpu_matmul_dtype()        # Choice("fp32", {"bf16": 37.2, "fp32": 13.3}): what Muon iterates in
    cpu_training_autocast()   # what train.amp=auto means on this CPU
    cpu_decode_weights()      # what chat/serve --precision auto stores the weights as

`recall(question)` / `remember(question, entry)` keep other measurements of the machine at hand the
same way (what compiling a model cost here and gained: ngpt.train.compile_policy).

Cache: $NGPT_MEASURED_CACHE, else $XDG_CACHE_HOME/ngpt/measured.json (~/.cache/...), one entry per
question and machine (CPU name, threads, torch version) with the times; an unreadable file is
measured again and rewritten (atomically). Re-measure: delete the file. Under torch.distributed every
rank takes rank 0's answer, so the ranks of one run compute alike.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from ngpt.device import device_name
from ngpt.io_utils import atomic_write_text

REPEATS = 5  # timed runs per candidate after one untimed warm-up; the median counts


@dataclass(frozen=True)
class Choice:
    name: str  # the winning candidate
    ms: dict[str, float]  # every candidate's median time, as measured here

    @property
    def summary(self) -> str:
        """'fp32 (measured here: fp32 13.3 ms, bf16 37.2 ms)': what a command prints beside the choice."""
        times = ", ".join(f"{n} {ms:.3g} ms" for n, ms in sorted(self.ms.items(), key=lambda kv: kv[1]))
        return f"{self.name} (measured here: {times})"


def cache_path() -> Path:
    if os.environ.get("NGPT_MEASURED_CACHE"):
        return Path(os.environ["NGPT_MEASURED_CACHE"])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "ngpt" / "measured.json"


def machine_key() -> str:
    return f"{device_name(torch.device('cpu'))} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: measure again (a cache loses nothing but time)
    return data if isinstance(data, dict) else {}


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm-up: first-call allocations and kernel selection are not the steady state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def recall(question: str) -> dict | None:
    """What was measured here for this question (one entry per question and machine), or None."""
    entry = _read_cache(cache_path()).get(f"{question} @ {machine_key()}")
    return entry if isinstance(entry, dict) else None


def remember(question: str, entry: dict) -> None:
    """Keep a measurement of this machine's for the next run (atomically; a read-only home keeps nothing)."""
    path = cache_path()
    cache = _read_cache(path)  # re-read: another process may have added its own answers meanwhile
    cache[f"{question} @ {machine_key()}"] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # the run still gets the measured answer, just not remembered


def fastest(question: str, candidates: dict[str, Callable[[], object]]) -> Choice:
    """The candidate that ran fastest here, measured once per machine and remembered (see the module docstring)."""
    entry = recall(question)
    if entry is not None and entry.get("choice") in candidates and isinstance(entry.get("ms"), dict):
        choice = Choice(entry["choice"], {n: float(v) for n, v in entry["ms"].items()})
    else:
        ms = {name: median_ms(fn) for name, fn in candidates.items()}
        choice = Choice(min(ms, key=ms.get), ms)
        remember(question, {"choice": choice.name, "ms": {n: round(v, 3) for n, v in ms.items()}})
    return agreed(choice)


def agreed(value):
    """Rank 0's answer on every rank of a torch.distributed run (close timings may differ per rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- the questions --------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def cpu_matmul_dtype() -> Choice:
    """bf16 or fp32 for batched matmuls of Newton-Schulz's shapes (a stack of 256×768 matrices and their Gram matrices)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, 768, generator=gen)

    def iterate(dtype: torch.dtype) -> Callable[[], object]:
        a = x.to(dtype)
        return lambda: torch.baddbmm(a, torch.bmm(a, a.mT), a)

    return fastest("newton-schulz matmuls", {"bf16": iterate(torch.bfloat16), "fp32": iterate(torch.float32)})


@lru_cache(maxsize=1)
def cpu_training_autocast() -> Choice:
    """bf16 autocast or fp32 for a training step (forward + backward) of a small model of ours."""
    from ngpt.model import GPT
    from ngpt.settings import ModelSettings

    torch.manual_seed(0)
    model = GPT(ModelSettings(vocab_size=1024, seq_len=128, n_embd=256, n_layer=2, n_head=4))
    idx = torch.randint(0, 1024, (4, 128))

    def step(autocast: bool) -> Callable[[], object]:
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                _, loss = model(idx, idx, logits="none")
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    return fastest("training autocast", {"bf16": step(True), "fp32": step(False)})


@lru_cache(maxsize=1)
def cpu_decode_weights() -> Choice:
    """int8 or fp32 weights for batch-1 decoding: one token through a stack of MLP-shaped matrices."""
    from torch import nn

    from ngpt.quantize import Int8Linear

    torch.manual_seed(0)
    layers = [nn.Linear(512, 2048, bias=False) if i % 2 == 0 else nn.Linear(2048, 512, bias=False) for i in range(8)]
    int8 = [Int8Linear(layer.weight) for layer in layers]
    x = torch.randn(1, 512)

    def chain(stack) -> Callable[[], object]:
        def run() -> None:
            with torch.no_grad():
                h = x
                for _ in range(4):
                    for layer in stack:
                        h = layer(h)
                        h = h / h.norm().clamp(min=1e-6)  # keep it finite: only the time matters
        return run

    return fastest("decode weights", {"int8": chain(int8), "fp32": chain(layers)})
