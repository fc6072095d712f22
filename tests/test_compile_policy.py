"""compile: auto (ngpt/train/compile_policy.py): when a run compiles, when it goes back to eager, and
that a run which switches (or whose compile fails) trains exactly as an eager one.

    pytest tests/test_compile_policy.py
"""

from __future__ import annotations

import pytest
import torch

from ngpt.measured import remember
from ngpt.settings import TrainSettings
from ngpt.train import compile_policy
from ngpt.train.compile_policy import (CHECK_STEPS, PROBE_STEPS, WARMUP_STEPS, CompilePolicy, CompileRecord,
                                      compile_signature, load_record, save_record)
from ngpt.train.schedule import seconds_left

PROBE = WARMUP_STEPS + PROBE_STEPS


def test_a_short_budget_stays_eager():
    policy = CompilePolicy()
    actions = [policy.observe(0.1, lambda step_s: 120.0) for _ in range(PROBE)]
    assert actions == [None] * PROBE and not policy.watching
    assert policy.outcome.startswith("eager (120 s left")
    assert policy.observe(0.1, lambda step_s: 1e9) is None  # settled: later steps change nothing


def test_a_long_budget_compiles_then_keeps_it_when_the_steps_are_faster():
    policy, asked = CompilePolicy(), []
    times = [0.1] * PROBE
    times[WARMUP_STEPS + 1] = 5.0  # one slow step (an eval, a neighbour): the median ignores it
    actions = [policy.observe(t, lambda step_s: asked.append(step_s) or 3600.0) for t in times]
    assert actions == [None] * (PROBE - 1) + ["compile"] and asked == [0.1]
    assert policy.compiling_now and policy.watching
    actions = [policy.observe(t, lambda step_s: 3600.0) for t in [40.0] + [0.07] * CHECK_STEPS]
    assert actions == [None] * (1 + CHECK_STEPS) and not policy.watching
    assert policy.compile_s == pytest.approx(39.9) and policy.compiled_step_s == 0.07
    assert policy.outcome.startswith("compiled: compiled steps 1.43× eager's")


def test_compiled_steps_that_are_not_faster_go_back_to_eager():
    policy = CompilePolicy()
    for _ in range(PROBE):
        policy.observe(0.1, lambda step_s: 3600.0)
    actions = [policy.observe(t, lambda step_s: 3600.0) for t in [30.0] + [0.098] * CHECK_STEPS]
    assert actions[-1] == "eager" and not policy.watching and policy.outcome.startswith("back to eager")


def _probe(policy, left):
    return [policy.observe(0.1, lambda step_s: left) for _ in range(PROBE)][-1]


def test_a_record_of_a_cheap_compile_here_makes_a_short_run_compile(tmp_path):
    warm = CompileRecord(compile_s=9.0, speedup=1.4, inductor_cache=str(tmp_path))
    policy = CompilePolicy(warm)
    assert _probe(policy, 110.0) == "compile"  # saves 110·(1 − 1/1.4) = 31 s ≥ 2 × 9 s
    assert "here it took 9 s last time and ran 1.40× faster" in policy.outcome
    costly = CompileRecord(compile_s=37.0, speedup=1.4, inductor_cache=str(tmp_path))
    policy = CompilePolicy(costly)
    assert _probe(policy, 110.0) is None and not policy.watching
    assert "compiling took 37 s here last time and ran 1.40× faster, so it would save 31 s" in policy.outcome
    assert _probe(CompilePolicy(costly), 300.0) == "compile"  # 86 s ≥ 74 s: a 37 s compile pays in 5 minutes
    no_gain = CompileRecord(compile_s=5.0, speedup=0.9, inductor_cache=str(tmp_path))
    assert _probe(CompilePolicy(no_gain), 10**6) is None  # slower when compiled here: never again


def test_a_record_of_a_cold_compile_bounds_the_next_one_so_a_gain_above_it_compiles(tmp_path):
    """The first compile of a model is cold; the next reads inductor's cache and costs less, so its record needs
    the saving to cover it once, not PAYBACK times (the Zen 5 host: 23 s cold, about 31 s to save)."""
    first = CompileRecord(compile_s=23.0, speedup=1.4, inductor_cache=str(tmp_path), cold=True)
    policy = CompilePolicy(first)
    assert _probe(policy, 110.0) == "compile"  # 31 s ≥ 23 s
    warm = CompileRecord(compile_s=23.0, speedup=1.4, inductor_cache=str(tmp_path))
    assert _probe(CompilePolicy(warm), 110.0) is None  # a warm cost of 23 s needs 46 s saved
    policy = CompilePolicy(first)
    assert _probe(policy, 60.0) is None  # 17 s < 23 s
    assert "compiling took 23 s (cold) here last time and ran 1.40× faster, so it would save 17 s" in policy.outcome


def test_a_compile_that_failed_here_is_not_tried_again():
    failed = CompileRecord(compile_s=None, speedup=1.0, inductor_cache="", error="InvalidCxxCompiler: no g++")
    policy = CompilePolicy(failed)
    assert _probe(policy, 10**6) is None
    assert "torch.compile failed here before (InvalidCxxCompiler: no g++); delete" in policy.outcome


def test_a_settled_policy_gives_its_measurement_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # empty: a first compile is cold
    policy = CompilePolicy()
    assert _probe(policy, 3600.0) == "compile" and policy.take_measured() is None
    for t in [12.1] + [0.08] * CHECK_STEPS:
        policy.observe(t, lambda step_s: 3600.0)
    record = policy.take_measured()
    assert record.compile_s == pytest.approx(12.0) and record.speedup == 1.25 and record.error is None
    assert record.cold  # no record to go on: this model's first compile here
    assert policy.take_measured() is None
    again = CompilePolicy(record)
    assert _probe(again, 3600.0) == "compile"
    for t in [3.1] + [0.08] * CHECK_STEPS:
        again.observe(t, lambda step_s: 3600.0)
    assert not again.take_measured().cold  # compiled with a record: inductor's cache held the kernels
    (tmp_path / "inductor" / "fxgraph" / "ab").mkdir(parents=True)
    unrecorded = CompilePolicy()  # no record (measured.json deleted), but inductor holds kernels: maybe warm
    _probe(unrecorded, 3600.0)
    for t in [3.1] + [0.08] * CHECK_STEPS:
        unrecorded.observe(t, lambda step_s: 3600.0)
    assert not unrecorded.take_measured().cold  # so its record keeps the stricter rule
    failed = CompilePolicy()
    _probe(failed, 3600.0)
    failed.compile_failed(RuntimeError("no compiler\nsecond line"))
    assert failed.take_measured().error == "RuntimeError: no compiler"


def test_records_round_trip_and_a_cold_inductor_cache_voids_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NGPT_MEASURED_CACHE", str(tmp_path / "measured.json"))
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    sig = compile_signature({"vocab_size": 64, "seq_len": 32, "n_embd": 16, "n_layer": 1}, 2, "fp32", "cpu", False)
    assert sig != compile_signature({"vocab_size": 64, "seq_len": 32, "n_embd": 16, "n_layer": 1}, 4, "fp32", "cpu", False)
    record = CompileRecord(compile_s=9.0, speedup=1.4, inductor_cache=str(cache))
    save_record(sig, record)
    assert load_record(sig) is None  # inductor holds no compiled graphs: the next compile is a cold one
    (cache / "fxgraph" / "ab").mkdir(parents=True)
    assert load_record(sig) == record
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert load_record(sig) is None
    failed = CompileRecord(compile_s=None, speedup=1.0, inductor_cache=str(cache), error="x")
    save_record(sig, failed)
    assert load_record(sig) == failed  # a failure does not depend on the cache
    remember(sig, {"compile_s": 1})
    assert load_record(sig) is None  # another version's entry: measured again


def test_seconds_left_is_the_budget_that_ends_first():
    steps = TrainSettings(total_steps=1000)
    assert seconds_left(100, 100 * 4096, 50.0, 0.5, 4096, steps) == 450.0
    tokens = TrainSettings(total_steps=1000, max_tokens=200 * 4096)
    assert seconds_left(100, 100 * 4096, 50.0, 0.5, 4096, tokens) == 50.0
    time = TrainSettings(total_steps=1000, max_time="10m")
    assert seconds_left(100, 100 * 4096, 500.0, 0.5, 4096, time) == 100.0
    assert seconds_left(100, 100 * 4096, 700.0, 0.5, 4096, time) == 0.0
