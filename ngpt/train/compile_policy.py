"""`compile: auto`: whether torch.compile pays for this run, decided by timing it on the machine at hand.

    record = load_record(compile_signature(...))          # what compiling this model cost here last time
    policy = CompilePolicy(record)                        # fit() makes one when compile is "auto"
    action = policy.observe(step_s, seconds_left_at)      # after each step while policy.watching:
                                                          # None | "compile" | "eager"
    save_record(signature, policy.take_measured())        # once settled, for the next run

A compile costs time up front and then makes each step faster, by how much depends on the machine,
the model, the precision and on whether inductor's cache already holds the kernels: for the
1M-parameter Shakespeare model on a 2-core Ice Lake Xeon (fp32) it took 37-40 s cold and 9 s warm,
then ran steps 1.35-1.45× faster. A short run loses by compiling and a long one gains. So:

1. time PROBE_STEPS eager steps (after WARMUP_STEPS untimed ones: the first steps grow the allocator);
2. compile when it pays for itself PAYBACK times over: with a record of this model's last compile on
   this machine (ngpt.measured's file), when the budget left × (1 − 1/its speedup) is at least PAYBACK ×
   its compile time; a compile that failed here (no C++ compiler) is not tried again. A record of a
   cold compile (the first of this model here) overstates the next one, which reads inductor's cache
   (on the Zen 5 host the Shakespeare model's took 23 s cold, and a 110 s run then stayed eager, its
   saving of about 31 s short of twice that): it is an upper bound on the cost, so a gain of once that
   bound is enough, and the compile it allows records the warm cost for the runs after. Without a
   record (or when inductor's cache has been emptied since, so the next compile is a cold one): when
   at least MIN_SECONDS_LEFT remain (at the cold costs above a compile has paid for itself after 2-3
   minutes; ten leave room for a slower machine or a smaller gain);
3. time CHECK_STEPS compiled steps after the first (which holds the compile) and go back to eager
   unless they are at least MIN_SPEEDUP faster than the eager ones. A first compiled step that
   raises (no C++ compiler for inductor, an op it cannot trace) is redone eager, and the run stays so.
   Either way `policy.measured` is the record the next run of this model decides with: after one
   compile the next reads inductor's cache, so a 110 s run of a model compiled before can compile.

Each decision takes the median of its window, so one slow step (an eval, a checkpoint, a noisy
neighbour) does not make it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ngpt.measured import agreed, cache_path, recall, remember

WARMUP_STEPS = 3
PROBE_STEPS = 8
MIN_SECONDS_LEFT = 600.0
CHECK_STEPS = 8
MIN_SPEEDUP = 1.05
PAYBACK = 2.0  # with a record: the time a compile is expected to save, over what it is expected to cost

Action = Literal["compile", "eager"]


@dataclass(frozen=True)
class CompileRecord:
    """What the last compile of one model cost and gained on this machine."""

    compile_s: float | None  # the first compiled step's time beyond an eager step's; None: the compile failed
    speedup: float  # eager step time ÷ compiled step time
    inductor_cache: str  # where inductor kept the kernels: if it is emptied, the next compile is cold again
    error: str | None = None  # why the compile failed
    # Whether that compile was this model's first here (no record to go on): then inductor's cache did not hold
    # its kernels and compile_s is the cold cost, an upper bound on the next one. Records of earlier versions
    # lack the field and count as warm: the stricter rule, as before.
    cold: bool = False


def compile_signature(model: dict, micro_batch: int, precision: str, device: str, activation_checkpointing: bool) -> str:
    """The measured.json question a record answers: everything the compiled graph depends on."""
    graph = json.dumps({"model": model, "micro_batch": micro_batch, "precision": precision, "device": device,
                        "activation_checkpointing": activation_checkpointing}, sort_keys=True)
    dims = f"V{model['vocab_size']} T{model['seq_len']} C{model['n_embd']} L{model['n_layer']} B{micro_batch}"
    return f"torch.compile of a training step ({dims}, {precision}, {device}, {hashlib.sha1(graph.encode()).hexdigest()[:12]})"


def inductor_cache_dir() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:  # a torch that moved it: records still hold, only the cold-cache check is lost
        return ""
    return cache_dir()


def _holds_kernels(cache_dir: str) -> bool:
    if not cache_dir:  # inductor_cache_dir() could not say where the cache is
        return False
    fxgraph = Path(cache_dir) / "fxgraph"  # inductor's cache of compiled graphs
    return fxgraph.is_dir() and any(fxgraph.iterdir())


def load_record(signature: str) -> CompileRecord | None:
    """This machine's record for the model (rank 0's under torch.distributed: every rank decides alike), or None
    when there is none, it is unreadable, or the compile it measured would now be a cold one."""
    entry = recall(signature)
    try:
        record = None if entry is None else CompileRecord(**entry)
    except TypeError:
        record = None  # written by another version: measure again
    if record is not None and record.compile_s is not None and record.inductor_cache:
        if record.inductor_cache != inductor_cache_dir() or not _holds_kernels(record.inductor_cache):
            record = None
    return agreed(record)


def save_record(signature: str, record: CompileRecord) -> None:
    remember(signature, asdict(record))


class CompilePolicy:
    """One run's decision: probing eager steps, checking compiled ones, then settled."""

    def __init__(self, record: CompileRecord | None = None) -> None:
        self.record = record
        # A compile with no record is cold unless inductor's cache holds kernels already (measured.json deleted, a
        # record of another version): then it may be warm, and its record keeps the stricter rule.
        self.compile_is_cold = record is None and not _holds_kernels(inductor_cache_dir())
        self.measured: CompileRecord | None = None  # this run's own record, once it compiled (or failed to)
        self.phase: Literal["probe", "check", "settled"] = "probe"
        self.times: list[float] = []
        self.eager_step_s: float | None = None
        self.compiled_step_s: float | None = None
        self.compile_s: float | None = None  # the first compiled step's time beyond an eager step's
        self.outcome = "timing eager steps"

    @property
    def watching(self) -> bool:
        return self.phase != "settled"

    @property
    def compiling_now(self) -> bool:
        """The next step is the first compiled one (the compile happens inside it)."""
        return self.phase == "check" and not self.times

    def observe(self, step_s: float, seconds_left_at: Callable[[float], float]) -> Action | None:
        """Record one optimizer step's wall time; the action to take before the next step, if any.

        seconds_left_at(step_s) is the budget's wall time left at that many seconds per step."""
        if self.phase == "settled":
            return None
        self.times.append(step_s)
        if self.phase == "probe":
            if len(self.times) < WARMUP_STEPS + PROBE_STEPS:
                return None
            self.eager_step_s = statistics.median(self.times[WARMUP_STEPS:])
            self.times = []
            left = seconds_left_at(self.eager_step_s)
            reason = self._why_not(left)
            if reason is not None:
                self.phase = "settled"
                self.outcome = f"eager ({left:.0f} s left at {self.eager_step_s:.3f} s/step: {reason})"
                return None
            self.phase = "check"
            last = "" if self.record is None else (f"; here it took {self.record.compile_s:.0f} s last time and ran "
                                                  f"{self.record.speedup:.2f}× faster")
            self.outcome = f"compiling ({left:.0f} s left at {self.eager_step_s:.3f} s/step eager{last})"
            return "compile"
        if len(self.times) < 1 + CHECK_STEPS:
            return None
        self.compile_s = max(0.0, self.times[0] - self.eager_step_s)
        self.compiled_step_s = statistics.median(self.times[1:])
        speedup = self.eager_step_s / self.compiled_step_s
        self.phase = "settled"
        self.measured = CompileRecord(round(self.compile_s, 2), round(speedup, 3), inductor_cache_dir(),
                                      cold=self.compile_is_cold)
        keep = speedup >= MIN_SPEEDUP
        self.outcome = (f"{'compiled' if keep else 'back to eager'}: compiled steps {speedup:.2f}× eager's "
                        f"({self.compiled_step_s:.3f} vs {self.eager_step_s:.3f} s), the compile took {self.compile_s:.0f} s")
        return None if keep else "eager"

    def take_measured(self) -> CompileRecord | None:
        """This run's record once, when it has one (after the check, or a failed compile); else None."""
        record, self.measured = self.measured, None
        return record

    def _why_not(self, left: float) -> str | None:
        """Why a compile would not pay with `left` seconds to go, or None when it would."""
        record = self.record
        if record is None:
            return None if left >= MIN_SECONDS_LEFT else "too little for a compile to pay"
        if record.compile_s is None:
            return f"torch.compile failed here before ({record.error}); delete {cache_path()} to try again"
        gain = left * (1 - 1 / record.speedup)
        payback = 1.0 if record.cold else PAYBACK  # a cold cost bounds a warm one: any gain above it is a gain
        if gain >= payback * record.compile_s:
            return None
        took = f"compiling took {record.compile_s:.0f} s{' (cold)' if record.cold else ''} here last time"
        return f"{took} and ran {record.speedup:.2f}× faster, so it would save {max(gain, 0.0):.0f} s"

    def compile_failed(self, error: BaseException) -> None:
        self.phase = "settled"
        first_line = (str(error).splitlines() or [""])[0][:160]
        self.outcome = f"eager: torch.compile failed here ({type(error).__name__}: {first_line})"
        self.measured = CompileRecord(None, 1.0, inductor_cache_dir(), f"{type(error).__name__}: {first_line}")
