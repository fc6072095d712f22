"""`ngpt bench sweep`: for this machine, the model config and training knobs of the most useful overnight run.

    from ngpt.bench.sweep import SweepPlan, prepare_sweep
    sweep = prepare_sweep(SweepPlan(settings=load_settings(), device="cpu", out_dir=Path("bench")))
    report = sweep.run()            # report.ranked[0] is the winner; report.config_path the override file

For every config of the grid (device-aware defaults, or a JSON list of configs), trials run one at a
time, each in a fresh process (ngpt.bench.trial) killed at `timeout_s`:
1. fit at micro_B=1, recording the dtype of every layer's output (does AMP really compute in bf16/fp16?);
2. doubling, then bisection, for the largest micro_B that fits. An OOM is a recorded result. Doubling
   also stops where one step would be too slow to time within the timeout (the limit is then "time");
3. tokens/s at that micro_B and at half of it (half is often faster);
4. where memory was the limit (or micro_B=1 did not fit), the same search with activation
   checkpointing: does recomputation move the fit envelope, and is the larger batch faster?
Each trial appends one line to {out}/results.jsonl as it ends. A re-run reuses every line with the
same trial settings and torch/device fingerprint, so an interrupted sweep resumes where it stopped.

Ranking, the 90 % rule: take each config's best tokens/s; among the configs within 90 % of the fastest,
the one with the most parameters wins (a bigger model that trains nearly as fast learns more per
night); the rest follow by tokens/s. The winner becomes {out}/overnight.json (and --write-config),
an override file for `ngpt train pretrain -c`: model dims, micro_batch, amp, activation
checkpointing, accum_steps for the target effective batch, total_steps for `hours`, max_time.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from ngpt.model import param_count
from ngpt.bench.trial import looks_like_oom
from ngpt.io_utils import atomic_write_text
from ngpt.settings import ModelSettings, Settings, SettingsError, deep_merge, load_settings, read_config_file

TRIAL_VERSION = 1  # part of the fingerprint: bump when what a trial measures changes, so old lines stop matching
KEEP_FRACTION = 0.9  # the 90 % rule
# The training loop also evaluates, checkpoints and reads data: total_steps plans on 90 % of the
# measured rate, and max_time stops the run at `hours` whatever happens.
OVERNIGHT_EFFICIENCY = 0.9
# A micro-batch is searched only if its timing trial is predicted to take at most half the timeout:
# margin for a noisy machine, and no trial planned that would be killed anyway.
TIME_SAFETY = 0.5
CPU_MEMORY_FRACTION = 0.5  # default --memory-gb on CPU: half the RAM; the rest stays for the OS and others
# Default on CUDA: 90 % of the GPU, headroom for what the loop adds to the measured steps (eval
# batches, checkpoint copies) and for allocator fragmentation over a night. MPS keeps its own limit.
CUDA_MEMORY_FRACTION = 0.9
FIT_STEPS = 2  # see ngpt.bench.trial: the second step is the memory peak
# Warm-up steps discarded before timing: on CPU the first step pays for allocation and AdamW state;
# GPUs also pick kernels (cuBLAS heuristics, cuDNN) and grow the caching allocator over a few steps.
WARMUP_STEPS = {"cpu": 1, "cuda": 3, "mps": 3}
MIN_STEPS, MAX_STEPS, TARGET_TIMED_S = 3, 20, 1.0  # timed steps: >= 3, more while they total < 1 s
DEFAULT_BATCH_TOKENS = {"cpu": 16_384, "mps": 32_768, "cuda": 131_072}  # effective batch (tokens/optimizer step)
INFO_TIMEOUT_S = 120.0  # the device-info trial: CUDA initialisation alone can take tens of seconds
SEED = 1337

GRID_KEYS = ("seq_len", "n_embd", "n_layer", "n_head", "vocab_size", "d_ff", "amp", "amp_dtype")
REQUIRED_KEYS = ("seq_len", "n_embd", "n_layer", "n_head")
# Names people reach for first (the summary's column heads); a hint, not an alias.
SHORT_NAMES = {"T": "seq_len", "C": "n_embd", "L": "n_layer", "H": "n_head", "V": "vocab_size"}
AMP_CHOICES = ("auto", "true", "false")
AMP_DTYPE_CHOICES = ("auto", "bf16", "fp16")


class SweepError(ValueError):
    """A bad grid, results file or sweep setting; the message names the file/entry/key and the fix."""


# ---------------------------------------------------------------------------------------------
# Grids.


@dataclass(frozen=True)
class GridEntry:
    """One config to measure: the model shape and the autocast setting (micro_B and checkpointing are searched)."""

    seq_len: int
    n_embd: int
    n_layer: int
    n_head: int
    vocab_size: int
    amp: str = "auto"  # auto | true | false, as pretrain.amp
    amp_dtype: str = "auto"  # auto | bf16 | fp16, as pretrain.amp_dtype
    d_ff: int | None = None

    def model_dict(self) -> dict:
        out = {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "n_embd": self.n_embd,
               "n_layer": self.n_layer, "n_head": self.n_head}
        return out if self.d_ff is None else {**out, "d_ff": self.d_ff}

    def model(self) -> ModelSettings:
        return ModelSettings(**self.model_dict())

    @property
    def label(self) -> str:
        amp = f"amp={self.amp}" + ("" if self.amp_dtype == "auto" else f"/{self.amp_dtype}")
        d_ff = "" if self.d_ff is None else f" d_ff={self.d_ff}"
        return f"T={self.seq_len} C={self.n_embd} L={self.n_layer} H={self.n_head}{d_ff} V={self.vocab_size} {amp}"


def parse_grid(data: object, origin: str, vocab_size: int) -> list[GridEntry]:
    """A JSON list of configs → entries; every problem names the file, the entry and the key."""
    example = '[{"seq_len": 256, "n_embd": 384, "n_layer": 6, "n_head": 6, "amp": "true"}]'
    if not isinstance(data, list) or not data:
        raise SweepError(f"{origin}: a grid is a non-empty JSON list of configs, e.g. {example}")
    entries: list[GridEntry] = []
    for i, item in enumerate(data, 1):
        where = f"{origin}, entry {i}"
        if not isinstance(item, dict):
            raise SweepError(f"{where}: each config is a JSON object like {example[1:-1]}, got {json.dumps(item)}")
        unknown = [k for k in item if k not in GRID_KEYS]
        if unknown:
            hints = []
            for key in unknown:
                close = SHORT_NAMES.get(key) or next(iter(difflib.get_close_matches(key, GRID_KEYS, n=1)), None)
                hints.append(f"'{key}'" + (f" (did you mean '{close}'?)" if close else ""))
            raise SweepError(f"{where}: unknown key(s) {', '.join(hints)}. Valid keys: {', '.join(GRID_KEYS)}")
        missing = [k for k in REQUIRED_KEYS if k not in item]
        if missing:
            raise SweepError(f"{where}: missing {', '.join(repr(k) for k in missing)}; every config needs "
                             f"{', '.join(REQUIRED_KEYS)}")
        amp = item.get("amp", "auto")
        amp = {True: "true", False: "false"}.get(amp, amp) if isinstance(amp, bool) else amp
        if amp not in AMP_CHOICES:
            raise SweepError(f"{where}: amp={json.dumps(item['amp'])}; use one of {', '.join(AMP_CHOICES)} (or true/false)")
        amp_dtype = item.get("amp_dtype", "auto")
        if amp_dtype not in AMP_DTYPE_CHOICES:
            raise SweepError(f"{where}: amp_dtype={json.dumps(amp_dtype)}; use one of {', '.join(AMP_DTYPE_CHOICES)}")
        dims = {k: item[k] for k in ("seq_len", "n_embd", "n_layer", "n_head", "vocab_size", "d_ff") if k in item}
        bad = {k: v for k, v in dims.items() if not (isinstance(v, int) and not isinstance(v, bool)) and v is not None}
        if bad:
            raise SweepError(f"{where}: {', '.join(f'{k}={json.dumps(v)}' for k, v in bad.items())} must be whole numbers")
        entry = GridEntry(vocab_size=dims.pop("vocab_size", vocab_size), amp=amp, amp_dtype=amp_dtype, **dims)
        try:
            entry.model()
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
                             for err in e.errors())
            raise SweepError(f"{where}: {msgs}") from None
        if entry in entries:
            raise SweepError(f"{where} repeats entry {entries.index(entry) + 1} ({entry.label}); remove one")
        entries.append(entry)
    return entries


def load_grid(path: Path, vocab_size: int) -> list[GridEntry]:
    if not path.is_file():
        raise SweepError(f"grid file {path} does not exist; pass a JSON list of configs to --grid")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SweepError(f"grid file {path} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
    return parse_grid(data, f"grid file {path}", vocab_size)


@dataclass(frozen=True)
class DeviceInfo:
    """What the info trial saw: device, name, memory, threads, bf16 support, torch/python versions."""

    raw: dict

    @property
    def device(self) -> str:
        return self.raw["device"]

    @property
    def type(self) -> str:
        return self.device.split(":")[0]

    @property
    def total_gib(self) -> float:
        return self.raw["total_memory_bytes"] / 2**30

    def fingerprint(self) -> dict:
        """What makes two measurements comparable: a re-run reuses only results with the same one."""
        return {**{k: v for k, v in self.raw.items() if k != "status"}, "trial_version": TRIAL_VERSION}


# (n_embd, n_layer, n_head) per device class; see README "ngpt bench sweep" for why these.
CPU_SIZES = ((128, 4, 4), (256, 6, 8))
MPS_SIZES = ((384, 6, 6), (512, 8, 8))
CUDA_SIZES_SMALL = ((384, 6, 6), (512, 8, 8))  # < 10 GiB
CUDA_SIZES_MID = ((512, 8, 8), (768, 12, 12))  # 10–16 GiB
CUDA_SIZES_LARGE = ((512, 8, 8), (768, 12, 12), (1024, 16, 16))  # >= 16 GiB


def default_grid(info: DeviceInfo, vocab_size: int) -> tuple[str, list[GridEntry]]:
    """The device-aware default grid and a one-line description of why it is this one."""
    if info.type == "cuda":
        gib = info.total_gib
        if gib < 10:
            name, seq_lens, sizes = f"CUDA < 10 GiB ({gib:.0f} GiB)", (256, 512), CUDA_SIZES_SMALL
        elif gib < 16:
            name, seq_lens, sizes = f"CUDA 10–16 GiB ({gib:.0f} GiB)", (256, 512), CUDA_SIZES_MID
        else:
            name, seq_lens, sizes = f"CUDA >= 16 GiB ({gib:.0f} GiB)", (512, 1024), CUDA_SIZES_LARGE
        amps = ("true",)
    elif info.type == "mps":
        name, seq_lens, sizes, amps = "MPS (AMP off)", (256, 512), MPS_SIZES, ("false",)
    else:
        bf16 = bool(info.raw.get("bf16"))
        name = "CPU (bf16 on/off: native bf16 here)" if bf16 else "CPU (fp32 only: no native bf16 here)"
        seq_lens, sizes, amps = (128, 256), CPU_SIZES, ("false", "true") if bf16 else ("false",)
    grid = [GridEntry(seq_len=t, n_embd=c, n_layer=l, n_head=h, vocab_size=vocab_size, amp=amp)
            for (c, l, h) in sizes for t in seq_lens for amp in amps]
    return f"default grid for {name}", grid


# ---------------------------------------------------------------------------------------------
# Trials: one fresh process each, killed (with its whole process group) at the timeout.


def _trial_env() -> dict:
    """The trial must import this very ngpt, installed or not: put its parent directory on PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the trial leads its own session: pgid == pid
    except ProcessLookupError:
        pass


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "status" in value:
            return value
    return None


def run_trial(spec: dict, timeout_s: float) -> dict:
    """Run `python -m ngpt.bench.trial SPEC`; its result plus wall_s. Hangs, OOMs and crashes are results."""
    cmd = [sys.executable, "-m", "ngpt.bench.trial", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=_trial_env())
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return {"status": "timeout", "wall_s": round(time.perf_counter() - t0, 3),
                "error": f"killed after {timeout_s:g} s (--timeout-s)"}
    except BaseException:  # Ctrl-C in the sweep: the trial is in its own session, so end it here
        _kill_group(proc)
        proc.communicate()
        raise
    wall = round(time.perf_counter() - t0, 3)
    result = _last_json_line(out)
    if result is None:
        tail = " ".join(err.strip().splitlines()[-3:])[-400:]
        if proc.returncode == -signal.SIGKILL:  # not ours: most likely the kernel's OOM killer
            return {"status": "oom", "wall_s": wall, "error": f"trial killed by SIGKILL (out of memory?) {tail}"}
        status = "oom" if looks_like_oom(err) else "error"
        return {"status": status, "wall_s": wall, "error": f"trial exited with code {proc.returncode}: {tail}"}
    result["wall_s"] = wall
    return result


def trial_key(spec: dict, fingerprint: dict) -> str:
    blob = json.dumps({"spec": spec, "fingerprint": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ResultStore:
    """{out}/results.jsonl: one JSON line per measured trial, appended and fsynced as each trial ends.

    A kill mid-append leaves at most one unterminated last line: loading drops it (the trial runs again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.dropped_torn_line = False
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        if text and not text.endswith("\n"):
            torn = lines.pop()
            try:
                json.loads(torn)
                lines.append(torn)  # complete, only its newline was lost
            except json.JSONDecodeError:
                self.dropped_torn_line = True
            atomic_write_text(self.path, "".join(line + "\n" for line in lines if line))
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SweepError(f"{self.path}, line {n} is not valid JSON ({e.msg}); delete that line (its trial "
                                 "runs again) or the whole file (every trial runs again)") from None
            if isinstance(record, dict) and "key" in record:
                self.records[record["key"]] = record  # a later line for the same trial wins

    def reusable(self, key: str, timeout_s: float) -> dict | None:
        """A stored result worth keeping: ok and OOM always; a timeout only if the timeout was not shorter."""
        record = self.records.get(key)
        if record is None:
            return None
        if record["status"] in ("ok", "oom"):
            return record
        if record["status"] == "timeout" and record.get("timeout_s", 0) >= timeout_s:
            return record
        return None  # errors (and shorter timeouts) are measured again

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["key"]] = record


# ---------------------------------------------------------------------------------------------
# What one config measured.


@dataclass(frozen=True)
class Fit:
    """The fit envelope: the largest micro_B that ran, and what stopped the search."""

    max_b: int  # 0: not even the first micro-batch ran
    limit: str  # cap | memory | time | error
    detail: str


@dataclass(frozen=True)
class Timing:
    micro_b: int
    checkpointing: bool
    status: str
    tokens_per_s: float | None
    step_ms: float | None
    error: str | None

    @classmethod
    def of(cls, record: dict) -> "Timing":
        return cls(record["micro_b"], record["spec"]["activation_checkpointing"], record["status"],
                   record.get("tokens_per_s"), record.get("step_ms"), record.get("error"))


@dataclass
class ConfigOutcome:
    entry: GridEntry
    params: int
    fit: Fit
    precision: str | None = None  # as resolved in the trial: "fp32", "bf16 autocast" ...
    amp_low_precision: bool | None = None  # all Linear outputs in the autocast dtype (None: AMP off)
    dtypes: dict | None = None
    fit_ckpt: Fit | None = None  # the same search with activation checkpointing (only where memory limited)
    timings: list[Timing] = field(default_factory=list)

    @property
    def best(self) -> Timing | None:
        ok = [t for t in self.timings if t.status == "ok" and t.tokens_per_s]
        return max(ok, key=lambda t: t.tokens_per_s) if ok else None

    @property
    def failure(self) -> str | None:
        if self.best is not None:
            return None
        if self.fit.max_b == 0 and (self.fit_ckpt is None or self.fit_ckpt.max_b == 0):
            return f"micro_B=1 did not run: {self.fit.detail}"
        failed = "; ".join(f"micro_B={t.micro_b}: {t.status}" for t in self.timings)
        return f"no timing trial finished ({failed})"


@dataclass(frozen=True)
class Ranked:
    outcome: ConfigOutcome
    best: Timing
    share: float  # of the fastest config's tokens/s
    contender: bool  # within KEEP_FRACTION of the fastest


def rank(outcomes: list[ConfigOutcome], keep: float = KEEP_FRACTION) -> list[Ranked]:
    """The 90 % rule: configs within `keep` of the best tokens/s first, most parameters first; then by tokens/s.

    Among contenders of the same size, the longer context wins (as fast, and it sees more per
    example: SFT conversations are cut to seq_len), then the faster.
    """
    timed = [(o, o.best) for o in outcomes if o.best is not None]
    if not timed:
        return []
    top = max(b.tokens_per_s for _, b in timed)
    rows = [Ranked(o, b, b.tokens_per_s / top, b.tokens_per_s >= keep * top * (1 - 1e-12)) for o, b in timed]
    return sorted(rows, key=lambda r: (not r.contender, -r.outcome.params if r.contender else 0,
                                       -r.outcome.entry.seq_len if r.contender else 0, -r.best.tokens_per_s))


# ---------------------------------------------------------------------------------------------
# The overnight config.


def duration_text(hours: float) -> str:
    """8 → '8h', 1.5 → '1h30m', 0.01 → '36s' (what pretrain.max_time parses)."""
    h, rest = divmod(max(1, round(hours * 3600)), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)


def overnight_overrides(winner: Ranked, hours: float, batch_tokens: int, device: str, base_warmup: int) -> dict:
    """The winner as `ngpt train` overrides: dims, micro_batch, amp, checkpointing, accum/total steps, max_time."""
    entry, best = winner.outcome.entry, winner.best
    micro_tokens = best.micro_b * entry.seq_len
    accum = max(1, round(batch_tokens / micro_tokens))
    step_tokens = micro_tokens * accum
    total_steps = max(1, int(OVERNIGHT_EFFICIENCY * best.tokens_per_s * hours * 3600 / step_tokens))
    pretrain = {"device": device, "micro_batch": best.micro_b, "accum_steps": accum, "total_steps": total_steps,
                "amp": entry.amp, "amp_dtype": entry.amp_dtype, "activation_checkpointing": best.checkpointing,
                "max_time": duration_text(hours)}
    if total_steps < 10 * base_warmup:  # a short run: keep warm-up to a tenth of it
        pretrain["warmup_steps"] = max(1, total_steps // 10)
    return {"model": entry.model_dict(), "pretrain": pretrain}


# ---------------------------------------------------------------------------------------------
# The sweep.


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
            self.write_overnight_config(report)
        report.wall_s = time.perf_counter() - t0
        atomic_write_text(self.plan.out_dir / "summary.md", summary_markdown(report))
        return report

    def write_overnight_config(self, report: SweepReport) -> None:
        p = self.plan
        overrides = overnight_overrides(report.winner, p.hours, self.batch_tokens, self.info.device,
                                        p.settings.pretrain.warmup_steps)
        written = deep_merge(read_config_file(p.base_config) if p.base_config else {}, overrides)
        try:
            load_settings(overrides=written, environ={})  # what `ngpt train -c` will do with it
        except SettingsError as e:
            raise SweepError(f"the overnight config does not load as settings ({e}); this is a bug in ngpt") from None
        text = json.dumps(written, indent=2) + "\n"
        report.overrides = overrides
        for path in (p.out_dir / "overnight.json", p.write_config):
            if path is not None:
                atomic_write_text(path, text)
                report.config_paths.append(path)


def prepare_sweep(plan: SweepPlan) -> Sweep:
    """Probe the device in a trial process, resolve the grid (file or default), load results.jsonl."""
    grid_from_file = load_grid(plan.grid_file, plan.settings.model.vocab_size) if plan.grid_file else None
    from ngpt.device import resolve_device  # checks CUDA/MPS availability without creating a context

    device = str(resolve_device(plan.device))
    info = run_trial({"kind": "info", "device": device}, INFO_TIMEOUT_S)
    if info["status"] != "ok":
        raise SweepError(f"could not start a trial process on {device}: {info.get('error')}")
    info.pop("wall_s", None)
    dev_info = DeviceInfo(info)
    if grid_from_file is not None:
        name, grid = f"grid file {plan.grid_file}", grid_from_file
    else:
        name, grid = default_grid(dev_info, plan.settings.model.vocab_size)
    return Sweep(plan, dev_info, name, grid)


def busy_warning(sweep: Sweep) -> str | None:
    """A warning when other work competed with the trials, judged from the load average.

    Back-to-back trials alone keep the 1-minute load near their thread count; clearly above that,
    other processes were running, and on CPU a few busy neighbours can slow torch's threads many-fold.
    """
    threads = int(sweep.info.raw.get("threads") or 1)
    if sweep.info.type != "cpu" or sweep.max_load <= threads + 1:
        return None
    return (f"Other work competed with the trials: the load average reached {sweep.max_load:.1f} on {threads} "
            f"threads (the trials alone make about {threads}). Their tokens/s are too low and may be ranked "
            f"wrongly; re-run when the machine is quiet, after deleting {sweep.store.path} to measure again.")


def _limit_of(record: dict) -> str:
    return {"oom": "memory", "timeout": "time"}.get(record["status"], "error")


def _failure_text(record: dict, micro_b: int) -> str:
    what = {"oom": "OOM", "timeout": "timeout"}.get(record["status"], "error")
    error = record.get("error") or ""
    return f"{what} at micro_B={micro_b}" + (f" ({error})" if record["status"] == "error" and error else "")


# ---------------------------------------------------------------------------------------------
# Summary: one table for summary.md and the terminal.

SUMMARY_COLUMNS = ("rank", "T/C/L/H", "params", "micro_B", "AMP", "ckpt", "tokens/s", "% of best",
                   "tokens in {hours}", "max micro_B (limit)")


def amp_cell(o: ConfigOutcome) -> str:
    if not o.precision or o.precision == "fp32":
        return "off"
    dtype = o.precision.split()[0]
    if o.amp_low_precision is None:
        return dtype
    if o.amp_low_precision:
        return f"{dtype} ✓"
    found = ", ".join(sorted((o.dtypes or {}).get("Linear", {}))) or "?"
    return f"{dtype} ✗ (matmuls ran in {found})"


def fit_cell(o: ConfigOutcome) -> str:
    text = f"{o.fit.max_b} ({o.fit.limit})"
    if o.fit_ckpt is not None:
        text += f"; ckpt: {o.fit_ckpt.max_b}" if o.fit_ckpt.max_b > o.fit.max_b else "; ckpt: no gain"
    return text


def summary_rows(ranked: list[Ranked], hours: float) -> list[tuple]:
    rows = []
    mixed_vocab = len({r.outcome.entry.vocab_size for r in ranked}) > 1  # else V is the same everywhere: noise
    for i, r in enumerate(ranked, 1):
        e, b = r.outcome.entry, r.best
        mark = " ★" if i == 1 else (" ≥90%" if r.contender else "")
        shape = f"{e.seq_len}/{e.n_embd}/{e.n_layer}/{e.n_head}" + (f"/V={e.vocab_size}" if mixed_vocab else "")
        rows.append((f"{i}{mark}", shape, _si(r.outcome.params), b.micro_b,
                     amp_cell(r.outcome), "yes" if b.checkpointing else "no", round(b.tokens_per_s),
                     f"{100 * r.share:.0f} %", _si(b.tokens_per_s * hours * 3600), fit_cell(r.outcome)))
    return rows


def summary_columns(hours: float) -> tuple[str, ...]:
    return tuple(c.format(hours=duration_text(hours)) for c in SUMMARY_COLUMNS)


def _si(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _md_table(columns: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def config_details(o: ConfigOutcome) -> str:
    """One line per config: the fit search, each timing, the AMP check, what checkpointing did."""
    timings = ", ".join(
        f"micro_B={t.micro_b}{' ckpt' if t.checkpointing else ''}: "
        + (f"{t.tokens_per_s:,.0f} tok/s ({t.step_ms:,.1f} ms/step)" if t.status == "ok" else t.status)
        for t in o.timings) or "none"
    if o.fit_ckpt is None:
        ckpt = f"not tried (the limit was {o.fit.limit}, not memory)" if o.fit.max_b else "not tried"
    elif o.fit_ckpt.max_b > o.fit.max_b:
        ckpt = f"moves max micro_B from {o.fit.max_b} to {o.fit_ckpt.max_b} (then {o.fit_ckpt.detail})"
    else:
        ckpt = f"does not move max micro_B (with it: {o.fit_ckpt.detail})"
    dtypes = "; ".join(f"{k}: " + ", ".join(f"{n}× {d}" for d, n in v.items()) for k, v in (o.dtypes or {}).items())
    return (f"- **{o.entry.label}** ({_si(o.params)} params): max micro_B {o.fit.max_b}, limit {o.fit.limit} "
            f"({o.fit.detail}). Timings: {timings}. AMP: {amp_cell(o)}"
            + (f" [{dtypes}]" if dtypes else "") + f". Checkpointing: {ckpt}.")


def summary_markdown(report: SweepReport) -> str:
    s, p = report.sweep, report.sweep.plan
    fp = s.info.raw
    lines = [
        f"# ngpt bench sweep — {fp['device']} ({fp['device_name']})", "",
        f"torch {fp['torch']}, python {fp['python']}, {fp['threads']} threads; "
        f"{s.grid_name}, {len(s.grid)} configs; timeout {p.timeout_s:g} s per trial; max micro_B {p.max_micro_b}; "
        f"memory budget {'device default' if s.memory_gb is None else f'{s.memory_gb:g} GiB'}; "
        f"{report.ran} trials run, {report.reused} reused from results.jsonl; {report.wall_s:.0f} s; "
        f"load average as the trials started: up to {s.max_load:.2f} (the trials' own {fp['threads']} threads make "
        f"about {fp['threads']}; other work on the machine makes every number lower); {s.load_start:.2f} when this "
        "run began.", "",
        *([f"**Warning:** {busy_warning(s)}", ""] if busy_warning(s) else []),
        f"Ranked by the 90 % rule: among configs within {100 * KEEP_FRACTION:.0f} % of the best tokens/s, the one "
        "with the most parameters first (same size: the longer context), ★ = the pick, ≥90% = within reach of "
        "the best; then the rest by tokens/s. "
        "T/C/L/H = seq_len/n_embd/n_layer/n_head; max micro_B (limit) = the largest micro-batch that ran and "
        "what stopped the search (memory: OOM above it; time: a larger one would not time within the "
        "timeout; cap: --max-micro-b). "
        "tokens/s is of full training steps (forward, backward, clipping, AdamW) on synthetic batches, median "
        "step after discarded warm-up steps.", "",
        _md_table(summary_columns(p.hours), summary_rows(report.ranked, p.hours)) if report.ranked
        else "**No config could be timed.** See the failures below and results.jsonl.", "",
    ]
    if report.overrides is not None:
        t = report.overrides["pretrain"]
        w = report.winner
        step_tokens = t["micro_batch"] * w.outcome.entry.seq_len * t["accum_steps"]
        lines += [
            f"Overnight config: {', '.join(str(x) for x in report.config_paths)} — micro_batch {t['micro_batch']} × "
            f"accum_steps {t['accum_steps']} × T {w.outcome.entry.seq_len} = {step_tokens:,} tokens per optimizer "
            f"step (target {s.batch_tokens:,}); total_steps {t['total_steps']:,} plans on "
            f"{100 * OVERNIGHT_EFFICIENCY:.0f} % of the measured rate for {duration_text(p.hours)}, and max_time "
            f"{t['max_time']} stops the run then. Run it: `ngpt train pretrain -c {report.config_paths[-1]}`.", ""]
    lines += ["## Per config", ""] + [config_details(o) for o in report.outcomes]
    failed = [o for o in report.outcomes if o.failure]
    if failed:
        lines += ["", "## Not ranked", ""] + [f"- **{o.entry.label}**: {o.failure}" for o in failed]
    return "\n".join(lines) + "\n"
