"""`compile: auto`: whether torch.compile pays for this run, decided by timing it on the machine at hand.

    policy = CompilePolicy()                              # fit() makes one when compile is "auto"
    action = policy.observe(step_s, seconds_left_at)      # after each step while policy.watching:
                                                          # None | "compile" | "eager"

A compile costs time up front and then makes each step faster, by how much depends on the machine,
the model and the precision: for the 1M-parameter Shakespeare model on a 2-core Xeon (bf16) it took
~50 s cold and ~15 s with inductor's cache warm, then ran steps 1.35-1.45× faster. A short run loses
by compiling and a long one gains. So:

1. time PROBE_STEPS eager steps (after WARMUP_STEPS untimed ones: the first steps grow the allocator);
2. compile when the budget left at that eager speed is at least MIN_SECONDS_LEFT (at the costs above
   a compile has paid for itself after 2-3 minutes; ten leave room for a slower compile or a
   smaller gain), else stay eager;
3. time CHECK_STEPS compiled steps after the first (which holds the compile) and go back to eager
   unless they are at least MIN_SPEEDUP faster than the eager ones. A first compiled step that
   raises (no C++ compiler for inductor, an op it cannot trace) is redone eager, and the run stays so.

Each decision takes the median of its window, so one slow step (an eval, a checkpoint, a noisy
neighbour) does not make it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Literal

WARMUP_STEPS = 3
PROBE_STEPS = 8
MIN_SECONDS_LEFT = 600.0
CHECK_STEPS = 8
MIN_SPEEDUP = 1.05

Action = Literal["compile", "eager"]


class CompilePolicy:
    """One run's decision: probing eager steps, checking compiled ones, then settled."""

    def __init__(self) -> None:
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
            if left < MIN_SECONDS_LEFT:
                self.phase = "settled"
                self.outcome = f"eager ({left:.0f} s left at {self.eager_step_s:.3f} s/step: too little for a compile to pay)"
                return None
            self.phase = "check"
            self.outcome = f"compiling ({left / 60:.0f} min left at {self.eager_step_s:.3f} s/step eager)"
            return "compile"
        if len(self.times) < 1 + CHECK_STEPS:
            return None
        self.compile_s = max(0.0, self.times[0] - self.eager_step_s)
        self.compiled_step_s = statistics.median(self.times[1:])
        speedup = self.eager_step_s / self.compiled_step_s
        self.phase = "settled"
        keep = speedup >= MIN_SPEEDUP
        self.outcome = (f"{'compiled' if keep else 'back to eager'}: compiled steps {speedup:.2f}× eager's "
                        f"({self.compiled_step_s:.3f} vs {self.eager_step_s:.3f} s), the compile took {self.compile_s:.0f} s")
        return None if keep else "eager"

    def compile_failed(self, error: BaseException) -> None:
        self.phase = "settled"
        first_line = (str(error).splitlines() or [""])[0][:160]
        self.outcome = f"eager: torch.compile failed here ({type(error).__name__}: {first_line})"
