"""Run one sweep trial in a fresh process, killed with its whole process group at a timeout.

    info = probe_device("cpu")                       # the info trial: DeviceInfo, the results' fingerprint
    result = run_trial({"kind": "fit", ...}, 20.0)   # the trial's JSON result plus wall_s

A fresh process per trial: an OOM or a hang cannot take the sweep down, memory from one trial never
counts against the next, and a CUDA context never lives in the sweep's own process. Whatever
happens is a result: a timeout, a kill by the kernel's OOM killer, a crash that printed no JSON line.
The trial itself is ngpt.bench.sweep.trial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ngpt.bench.sweep.grid import SweepError

TRIAL_VERSION = 1  # part of the fingerprint: bump when what a trial measures changes, so old lines stop matching
INFO_TIMEOUT_S = 120.0  # the device-info trial: CUDA initialisation alone can take tens of seconds
# Text of the errors that mean "the allocation did not fit", from torch (CUDA, MPS, CPU allocator),
# C++ (std::bad_alloc, also when it aborts the process) and the C library (ENOMEM).
OOM_MARKERS = ("out of memory", "can't allocate memory", "bad_alloc", "cannot allocate memory")


def looks_like_oom(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in OOM_MARKERS)


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


def _trial_env() -> dict:
    """The trial must import this very ngpt, installed or not: put its parent directory on PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[3])
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
    """Run `python -m ngpt.bench.sweep.trial SPEC`; its result plus wall_s. Hangs, OOMs and crashes are results."""
    cmd = [sys.executable, "-m", "ngpt.bench.sweep.trial", json.dumps(spec)]
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


def probe_device(device: str) -> DeviceInfo:
    """The device as a trial process sees it; SweepError if no trial process starts there."""
    info = run_trial({"kind": "info", "device": device}, INFO_TIMEOUT_S)
    if info["status"] != "ok":
        raise SweepError(f"could not start a trial process on {device}: {info.get('error')}")
    info.pop("wall_s", None)
    return DeviceInfo(info)
