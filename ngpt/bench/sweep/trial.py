"""One trial of `ngpt bench sweep`, run in a fresh process: print one JSON result line and exit.

    python -m ngpt.bench.sweep.trial '{"kind": "info", "device": "cpu"}'
    python -m ngpt.bench.sweep.trial '{"kind": "fit", "device": "cpu", "model": {"vocab_size": 512, "seq_len": 32,
        "n_embd": 32, "n_layer": 1, "n_head": 2}, "amp": "false", "amp_dtype": "auto", "micro_b": 4,
        "activation_checkpointing": false, "memory_gb": 2.0, "dtypes": true, "seed": 1337}'

Kinds (every step is a full training step of ngpt.bench.speed.TrainStep on a synthetic batch):
- info: the device as a trial process sees it (name, memory, threads, bf16, torch version): the sweep's
  fingerprint. The sweep asks a subprocess because a CUDA context in the sweep's own process would
  hold GPU memory that the trials then lack.
- fit: two steps at `micro_b`. The second is the memory peak (AdamW state, activations and gradients
  all alive at once), so two steps that finish mean the micro-batch fits. Both steps are timed
  (the device synchronised around each); the second predicts how long larger batches take. With
  `"dtypes": true` it also records the output dtype of every layer under the autocast: whether AMP
  really computes in low precision.
- time: `warmup_steps` untimed steps (allocator, kernel selection), then at least `min_steps` timed
  steps, more while they total under `target_s` (at most `max_steps`); tokens/s is of the median step.

Out-of-memory is a result (`"status": "oom"`), never a crash: CUDA/MPS out-of-memory errors, and on
CPU the budget `memory_gb`: memory this process may commit on top of what the interpreter, torch and
its thread pool already hold, enforced with RLIMIT_DATA (allocations past it fail with MemoryError /
"DefaultCPUAllocator: can't allocate memory"). RLIMIT_DATA and not RLIMIT_AS: since Linux 4.7 it
counts private writable mappings, i.e. memory in use, while the address space also counts what
malloc merely reserves (64 MiB per thread arena, created as threads contend), which made small
budgets fail at random. On CUDA/MPS `memory_gb` caps the caching allocator (per-process memory
fraction). Any other failure is `"status": "error"`.

Test-only knob: the environment variable NGPT_TRIAL_TEST_SLEEP_S=N makes a fit/time trial sleep N
seconds before it starts, so tests can check that the sweep kills a hanging trial at its timeout.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
import time
from typing import Any

from ngpt.bench.sweep.runner import looks_like_oom  # the same test the runner applies to a crashed trial

TEST_SLEEP_ENV = "NGPT_TRIAL_TEST_SLEEP_S"


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and looks_like_oom(str(exc))


def short_error(exc: BaseException) -> str:
    """The first line of the error (torch's allocator messages run on with hints), typed."""
    first = (str(exc).strip().splitlines() or ["(no message: an allocation failed)"])[0]
    return f"{type(exc).__name__}: {first[:400]}"


# ---------------------------------------------------------------------------------------------
# Memory: the budget and the peak.


def data_segment_bytes() -> int | None:
    """This process's private writable memory (VmData): what RLIMIT_DATA counts."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            match = re.search(r"^VmData:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def apply_memory_budget(device, memory_gb: float | None) -> int | None:
    """Cap what this process may allocate from now on; returns the cap in bytes (None: no cap)."""
    if memory_gb is None:
        return None
    import torch

    budget = int(memory_gb * 2**30)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
        return budget
    if device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)  # torch >= 2.3
        if recommended is None:
            return None
        torch.mps.set_per_process_memory_fraction(min(2.0, budget / recommended()))  # a fraction of that
        return budget
    base = data_segment_bytes()
    if base is None:  # no /proc (macOS): the kernel does not enforce RLIMIT_DATA on mmap there either
        return None
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = base + budget if hard == resource.RLIM_INFINITY else min(hard, base + budget)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    return budget


def peak_memory_bytes(device) -> int:
    """Peak memory of this trial: allocated by torch on a GPU, resident set size on CPU."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------
# The kinds.


def device_info(spec: dict) -> dict:
    import torch

    from ngpt.device import device_name
    from ngpt.device import cpu_has_native_bf16, resolve_device

    dev = resolve_device(spec["device"])
    info: dict[str, Any] = {
        "device": str(dev), "device_name": device_name(dev), "torch": torch.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(total_memory_bytes=props.total_memory, bf16=torch.cuda.is_bf16_supported(),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    elif dev.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)  # torch >= 2.3
        info.update(total_memory_bytes=int(recommended()) if recommended else None, bf16=False)
    else:
        info.update(total_memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    bf16=cpu_has_native_bf16())
    return {"status": "ok", **info}


def record_output_dtypes(model) -> tuple[dict[str, str], list]:
    """Hooks that note each leaf module's output dtype by module name (a re-run overwrites, never doubles)."""
    seen: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def hook(mod, args, out, name=name):
            if hasattr(out, "dtype"):
                seen[name] = str(out.dtype).removeprefix("torch.")

        handles.append(module.register_forward_hook(hook))
    return seen, handles


def dtype_summary(model, seen: dict[str, str]) -> dict[str, dict[str, int]]:
    """{"Linear": {"bfloat16": 7}, "RMSNorm": {...}, ...}: how many layers of each type output each dtype."""
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    out: dict[str, dict[str, int]] = {}
    for name, dtype in seen.items():
        per = out.setdefault(kinds[name], {})
        per[dtype] = per.get(dtype, 0) + 1
    return out


def run_steps(spec: dict) -> dict:
    import torch

    from ngpt.bench.speed import ModelTiming, SpeedPlan, TrainStep, build_ngpt, synthetic_batch, time_interleaved
    from ngpt.device import resolve_device, resolve_precision
    from ngpt.settings import ModelSettings

    dev = resolve_device(spec["device"])
    precision = resolve_precision(dev, spec["amp"], spec["amp_dtype"])
    cfg = ModelSettings(**spec["model"])
    kind, micro_b = spec["kind"], int(spec["micro_b"])
    plan = SpeedPlan(model=cfg, device=dev, precision=precision, micro_b=micro_b,
                     activation_checkpointing=bool(spec["activation_checkpointing"]), seed=int(spec["seed"]))
    # One step of a miniature model with the same settings first: lazy imports, kernel libraries
    # and the CPU thread pool all take memory the budget should not be charged for (and an import
    # or a thread that fails under the limit crashes oddly instead of raising MemoryError).
    mini = ModelSettings(vocab_size=8, seq_len=8, n_embd=8, n_layer=1, n_head=1)
    warm = SpeedPlan(model=mini, device=dev, precision=precision, micro_b=1,
                     activation_checkpointing=plan.activation_checkpointing)
    warm_model = build_ngpt(warm)
    warm_idx, warm_targets = synthetic_batch(mini.vocab_size, 1, mini.seq_len, 0, dev)
    TrainStep(warm_model, lambda: warm_model(warm_idx, warm_targets, logits="none")[1], warm)()
    del warm_model
    budget = apply_memory_budget(dev, spec.get("memory_gb"))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result: dict[str, Any] = {"kind": kind, "micro_b": micro_b, "precision": precision.label,
                              "budget_bytes": budget, "threads": torch.get_num_threads()}
    try:
        model = build_ngpt(plan)
        result["params"] = model.num_params()
        idx, targets = synthetic_batch(cfg.vocab_size, micro_b, cfg.seq_len, plan.seed, dev)
        step = TrainStep(model, lambda: model(idx, targets, logits="none")[1], plan)
        if kind == "fit":
            seen, handles = record_output_dtypes(model) if spec.get("dtypes") else ({}, [])
            (times,) = time_interleaved([step], 0, 2, dev)
            for h in handles:
                h.remove()
            if spec.get("dtypes"):
                result["dtypes"] = dtype_summary(model, seen)
                if precision.enabled:
                    low = str(precision.dtype).removeprefix("torch.")
                    linear = result["dtypes"].get("Linear", {})
                    result["amp_low_precision"] = bool(linear) and set(linear) == {low}
        else:
            (times,) = time_interleaved([step], int(spec["warmup_steps"]), int(spec["min_steps"]), dev)
            while len(times) < int(spec["max_steps"]) and sum(times) < float(spec["target_s"]):
                times += time_interleaved([step], 0, 1, dev)[0]
            timing = ModelTiming("ngpt", result["params"], model.flops_per_token(), plan.tokens_per_step, tuple(times))
            result["tokens_per_s"] = round(timing.tokens_per_s, 2)  # of the median step
            result["step_ms"] = round(1e3 * timing.median_step_s, 3)
        result["step_s"] = [round(t, 6) for t in times]
        result["peak_mem_bytes"] = peak_memory_bytes(dev)
        result["status"] = "ok"
    except Exception as e:  # noqa: BLE001 — every failure becomes a recorded result, the sweep goes on
        result["status"] = "oom" if is_oom(e) else "error"
        result["error"] = short_error(e)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ngpt.bench.sweep.trial '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    sleep_s = os.environ.get(TEST_SLEEP_ENV)
    if sleep_s and spec["kind"] != "info":
        time.sleep(float(sleep_s))
    try:
        result = device_info(spec) if spec["kind"] == "info" else run_steps(spec)
    except Exception as e:  # noqa: BLE001 — e.g. a device that is not there: still one JSON line
        result = {"status": "oom" if is_oom(e) else "error", "error": short_error(e)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
