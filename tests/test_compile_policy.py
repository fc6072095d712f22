"""compile: auto (ngpt/train/compile_policy.py): when a run compiles, when it goes back to eager, and
that a run which switches (or whose compile fails) trains exactly as an eager one.

    pytest tests/test_compile_policy.py
"""

from __future__ import annotations

import pytest
import torch

from ngpt.settings import TrainSettings
from ngpt.train import compile_policy
from ngpt.train.compile_policy import CHECK_STEPS, PROBE_STEPS, WARMUP_STEPS, CompilePolicy
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


def test_seconds_left_is_the_budget_that_ends_first():
    steps = TrainSettings(total_steps=1000)
    assert seconds_left(100, 100 * 4096, 50.0, 0.5, 4096, steps) == 450.0
    tokens = TrainSettings(total_steps=1000, max_tokens=200 * 4096)
    assert seconds_left(100, 100 * 4096, 50.0, 0.5, 4096, tokens) == 50.0
    time = TrainSettings(total_steps=1000, max_time="10m")
    assert seconds_left(100, 100 * 4096, 500.0, 0.5, 4096, time) == 100.0
    assert seconds_left(100, 100 * 4096, 700.0, 0.5, 4096, time) == 0.0
