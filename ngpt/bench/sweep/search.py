"""The sweep itself: per config of the grid, the largest micro_B that fits and its tokens/s; then rank and write.

    sweep = prepare_sweep(SweepPlan(settings=load_settings(), device="cpu", out_dir=Path("bench")))
    report = sweep.run(on_trial)    # on_trial(record, reused, done, estimated_total) after every trial

Per config, trials run one at a time (each one a fresh process, see runner.py; each stored, see store.py):
1. fit at micro_B=1, recording the dtype of every layer's output (does AMP really compute in bf16/fp16?);
2. doubling, then bisection, for the largest micro_B that fits. An OOM is a recorded result. Doubling
   also stops where one step would be too slow to time within the timeout (the limit is then "time");
3. tokens/s at that micro_B and at half of it (half is often faster);
4. where memory was the limit (or micro_B=1 did not fit), the same search with activation
   checkpointing: does recomputation move the fit envelope, and is the larger batch faster?
After each config summary.md is rewritten (a partial one survives a kill); at the end the winner
becomes overnight.json.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ngpt.bench.sweep.grid import GridEntry, default_grid, load_grid
from ngpt.bench.sweep.overnight import write_overnight_config
from ngpt.bench.sweep.ranking import ConfigOutcome, Fit, Ranked, Timing, rank
from ngpt.bench.sweep.runner import DeviceInfo, probe_device, run_trial
from ngpt.bench.sweep.store import ResultStore, trial_key
from ngpt.bench.sweep.summary import summary_markdown
from ngpt.device import resolve_device
from ngpt.io_utils import atomic_write_text
from ngpt.model import param_count
from ngpt.settings import Settings

# A micro-batch is searched only if its timing trial is predicted to take at most half the timeout:
# margin for a noisy machine, and no trial planned that would be killed anyway.
TIME_SAFETY = 0.5
CPU_MEMORY_FRACTION = 0.5  # default --memory-gb on CPU: half the RAM; the rest stays for the OS and others
# Default on CUDA: 90 % of the GPU, headroom for what the loop adds to the measured steps (eval
# batches, checkpoint copies) and for allocator fragmentation over a night. MPS keeps its own limit.
CUDA_MEMORY_FRACTION = 0.9
# Warm-up steps discarded before timing: on CPU the first step pays for allocation and AdamW state;
# GPUs also pick kernels (cuBLAS heuristics, cuDNN) and grow the caching allocator over a few steps.
WARMUP_STEPS = {"cpu": 1, "cuda": 3, "mps": 3}
MIN_STEPS, MAX_STEPS, TARGET_TIMED_S = 3, 20, 1.0  # timed steps: >= 3, more while they total < 1 s
DEFAULT_BATCH_TOKENS = {"cpu": 16_384, "mps": 32_768, "cuda": 131_072}  # effective batch (tokens/optimizer step)
SEED = 1337


@dataclass(frozen=True)
class SweepPlan:
    """What to sweep and where; the CLI fills it from flags."""

    settings: Settings  # vocab_size and warm-up come from here (defaults < --config < env)
    device: str = "auto"
    out_dir: Path = Path("bench")
    grid_file: Path | None = None
    timeout_s: float = 20.0
    max_micro_b: int = 64
    hours: float = 8.0
    memory_gb: float | None = None  # None: a device default (see CPU_MEMORY_FRACTION, CUDA_MEMORY_FRACTION)
    batch_tokens: int | None = None  # None: DEFAULT_BATCH_TOKENS for the device
    base_config: Path | None = None  # merged under the winner in the written config, so it stands alone
    write_config: Path | None = None  # also write the overnight config here


@dataclass
class SweepReport:
    sweep: "Sweep"
    outcomes: list[ConfigOutcome]
    ranked: list[Ranked]
    ran: int
    reused: int
    wall_s: float
    overrides: dict | None = None
    config_paths: list[Path] = field(default_factory=list)

    @property
    def winner(self) -> Ranked | None:
        return self.ranked[0] if self.ranked else None


TrialCallback = Callable[[dict, bool, int, int], None]  # (record, reused, trials done, estimated total)


class Sweep:
    """A prepared sweep: device probed, grid and budgets resolved, results store loaded. `run()` measures."""

    def __init__(self, plan: SweepPlan, info: DeviceInfo, grid_name: str, grid: list[GridEntry]) -> None:
        self.plan, self.info, self.grid_name, self.grid = plan, info, grid_name, grid
        self.fingerprint = info.fingerprint()
        self.store = ResultStore(plan.out_dir / "results.jsonl")
        if plan.memory_gb is not None:
            self.memory_gb: float | None = plan.memory_gb
        elif info.type == "cpu":
            self.memory_gb = round(CPU_MEMORY_FRACTION * info.total_gib, 2)
        elif info.type == "cuda":
            self.memory_gb = round(CUDA_MEMORY_FRACTION * info.total_gib, 2)
        else:
            self.memory_gb = None
        self.batch_tokens = plan.batch_tokens or DEFAULT_BATCH_TOKENS.get(info.type, DEFAULT_BATCH_TOKENS["cpu"])
        self.warmup = WARMUP_STEPS.get(info.type, WARMUP_STEPS["cuda"])
        self.ran = self.reused = 0
        self.load_start = os.getloadavg()[0]
        self.max_load = 0.0  # highest load average as the trials behind these results started (reused ones too)
        self._on_trial: TrialCallback | None = None
        self._estimate = 0

    @property
    def per_config_estimate(self) -> int:
        """Trials per config when nothing runs out: micro_B=1, the doublings up to the cap, two timings."""
        return 1 + math.ceil(math.log2(self.plan.max_micro_b)) + 2

    # ---- one trial ------------------------------------------------------------------------------

    def spec(self, entry: GridEntry, kind: str, micro_b: int, ckpt: bool, dtypes: bool = False) -> dict:
        spec = {"kind": kind, "device": self.info.device, "model": entry.model_dict(), "amp": entry.amp,
                "amp_dtype": entry.amp_dtype, "micro_b": micro_b, "activation_checkpointing": ckpt,
                "memory_gb": self.memory_gb, "seed": SEED}
        if kind == "fit":
            spec["dtypes"] = dtypes
        else:
            spec.update(warmup_steps=self.warmup, min_steps=MIN_STEPS, max_steps=MAX_STEPS, target_s=TARGET_TIMED_S)
        return spec

    def trial(self, entry: GridEntry, kind: str, micro_b: int, ckpt: bool, dtypes: bool = False) -> dict:
        spec = self.spec(entry, kind, micro_b, ckpt, dtypes)
        key = trial_key(spec, self.fingerprint)
        record = self.store.reusable(key, self.plan.timeout_s)
        reused = record is not None
        if record is None:
            load = os.getloadavg()[0]
            result = run_trial(spec, self.plan.timeout_s)
            record = {"key": key, "config": entry.label, **result, "micro_b": micro_b, "spec": spec,
                      "timeout_s": self.plan.timeout_s, "load_1m": round(load, 2),
                      "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "fingerprint": self.fingerprint}
            self.store.append(record)
            self.ran += 1
        else:
            self.reused += 1
        self.max_load = max(self.max_load, record.get("load_1m", 0.0))
        if self._on_trial is not None:
            self._on_trial(record, reused, self.ran + self.reused, self._estimate)
        return record

    # ---- the fit envelope -------------------------------------------------------------------------

    def predicted_timing_s(self, fit_record: dict, micro_b: int) -> float:
        """Wall time of a timing trial at micro_b, from a fit trial's faster step (step time ∝ micro_B).

        The faster of the two steps: other work on the machine only ever adds time to a step.
        """
        steps = fit_record["step_s"]
        overhead = max(0.0, fit_record["wall_s"] - sum(steps))  # interpreter, imports, model build
        return overhead + (self.warmup + MIN_STEPS) * min(steps) * micro_b / fit_record["micro_b"]

    def search(self, entry: GridEntry, ckpt: bool, start_b: int, dtypes: bool) -> tuple[Fit, dict]:
        """Largest micro_B that fits: the start, then doubling to the cap, then bisection below a failure."""
        cap, budget = self.plan.max_micro_b, TIME_SAFETY * self.plan.timeout_s
        first = self.trial(entry, "fit", start_b, ckpt, dtypes)
        if first["status"] != "ok":
            return Fit(0, _limit_of(first), _failure_text(first, start_b)), first
        lo, lo_record, hi = start_b, first, None
        limit, detail = "cap", f"--max-micro-b {cap}"
        while hi is None or hi - lo > 1:
            nxt = min(2 * lo, cap) if hi is None else (lo + hi) // 2
            if nxt <= lo:
                break  # at the cap
            if self.predicted_timing_s(lo_record, nxt) > budget:
                if hi is None:
                    limit, detail = "time", f"micro_B={nxt} would not time within --timeout-s {self.plan.timeout_s:g}"
                    break
                hi = nxt  # while bisecting below an OOM: too slow to time is out too
                continue
            record = self.trial(entry, "fit", nxt, ckpt)
            if record["status"] == "ok":
                lo, lo_record = nxt, record
            else:  # the smallest failure so far is what bounds the envelope
                limit, detail, hi = _limit_of(record), _failure_text(record, nxt), nxt
        return Fit(lo, limit, detail), first

    def measure(self, entry: GridEntry) -> ConfigOutcome:
        fit, first = self.search(entry, ckpt=False, start_b=1, dtypes=True)
        outcome = ConfigOutcome(entry, param_count(entry.model()), fit)
        if fit.limit == "memory":  # also when micro_B=1 itself did not fit
            outcome.fit_ckpt, ckpt_first = self.search(entry, ckpt=True, start_b=max(1, fit.max_b), dtypes=fit.max_b == 0)
            if fit.max_b == 0:
                first = ckpt_first
        outcome.precision = first.get("precision")
        outcome.amp_low_precision = first.get("amp_low_precision")
        outcome.dtypes = first.get("dtypes")
        plans = [(fit.max_b, False), (fit.max_b // 2, False)]
        ck = outcome.fit_ckpt
        if ck is not None and ck.max_b > fit.max_b:  # checkpointing moved the envelope: is the larger batch faster?
            plans.append((ck.max_b, True))
            if fit.max_b == 0:
                plans.append((ck.max_b // 2, True))
        for micro_b, use_ckpt in plans:
            if micro_b >= 1:
                outcome.timings.append(Timing.of(self.trial(entry, "time", micro_b, use_ckpt)))
        return outcome

    # ---- everything ---------------------------------------------------------------------------------

    def run(self, on_trial: TrialCallback | None = None) -> SweepReport:
        t0 = time.perf_counter()
        self._on_trial = on_trial
        outcomes: list[ConfigOutcome] = []
        report = SweepReport(self, outcomes, [], 0, 0, 0.0)
        for i, entry in enumerate(self.grid):
            self._estimate = self.ran + self.reused + (len(self.grid) - i) * self.per_config_estimate
            outcomes.append(self.measure(entry))
            report.ranked, report.ran, report.reused = rank(outcomes), self.ran, self.reused
            report.wall_s = time.perf_counter() - t0
            atomic_write_text(self.plan.out_dir / "summary.md", summary_markdown(report))  # partial: survives a kill
        if report.winner is not None:
            report.overrides, report.config_paths = write_overnight_config(
                report.winner, self.plan, self.batch_tokens, self.info.device)
        report.wall_s = time.perf_counter() - t0
        atomic_write_text(self.plan.out_dir / "summary.md", summary_markdown(report))
        return report


def prepare_sweep(plan: SweepPlan) -> Sweep:
    """Probe the device in a trial process, resolve the grid (file or default), load results.jsonl."""
    # The grid first: a bad grid file fails before any trial process starts.
    grid_from_file = load_grid(plan.grid_file, plan.settings.model.vocab_size) if plan.grid_file else None
    info = probe_device(str(resolve_device(plan.device)))  # resolve_device creates no CUDA context here
    if grid_from_file is not None:
        name, grid = f"grid file {plan.grid_file}", grid_from_file
    else:
        name, grid = default_grid(info, plan.settings.model.vocab_size)
    return Sweep(plan, info, name, grid)


def _limit_of(record: dict) -> str:
    return {"oom": "memory", "timeout": "time"}.get(record["status"], "error")


def _failure_text(record: dict, micro_b: int) -> str:
    what = {"oom": "OOM", "timeout": "timeout"}.get(record["status"], "error")
    error = record.get("error") or ""
    return f"{what} at micro_B={micro_b}" + (f" ({error})" if record["status"] == "error" and error else "")
