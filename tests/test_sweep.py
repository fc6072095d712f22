"""Tests for `ngpt bench sweep` (ngpt/bench/sweep/, ngpt/cli/sweep.py).

Real trial subprocesses on CPU with tiny configs and short timeouts. One sweep (module fixture) over
two configs is shared: a short-context one that fits up to the micro-batch cap, and a long-context one
that runs out of a tiny memory budget (the OOM path, and the checkpointing search behind it).
Timings are never asserted, only the machinery, the records and the ranking rule.

    pytest tests/test_sweep.py
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fixtures import ngpt_cli, write_workspace
from ngpt.bench.sweep import (
    ConfigOutcome,
    DeviceInfo,
    Fit,
    GridEntry,
    ResultStore,
    SweepError,
    SweepPlan,
    Timing,
    busy_warning,
    default_grid,
    duration_text,
    load_grid,
    prepare_sweep,
    rank,
)
from ngpt.bench.sweep.trial import TEST_SLEEP_ENV
from ngpt.cli.sweep import sweep as sweep_command
from ngpt.settings import load_settings
from ngpt.train.loop import run_phase

SMALL = {"seq_len": 32, "n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 512, "amp": True}  # bf16 on any CPU
# Its attention probabilities (kept for backward, T² per head and layer) outgrow MEMORY_GB at
# micro_B 4 (measured: fits 3); checkpointing recomputes them per layer, so it may fit more. The budget is large next to the
# allocator's own granularity (tens of MiB budgets fail at random points: thread arenas, caches), so
# the edge is stable.
BIG_CONTEXT = {"seq_len": 512, "n_embd": 64, "n_layer": 2, "n_head": 8, "vocab_size": 512, "amp": False}
MEMORY_GB = 0.1
MAX_B = 4
PHASE = {"micro_batch": 2, "accum_steps": 2, "eval_every": 3, "ckpt_every": 3, "eval_batches": 2,
         "warmup_steps": 2, "amp": "false", "device": "cpu", "total_steps": 6}


def write_grid(path: Path, entries: list) -> Path:
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_tokenizer_path) -> Path:
    """Fixture sources + the tiny tokenizer + every cache built by `ngpt cache build-all`; returns the config."""
    return write_workspace(tmp_path_factory.mktemp("ws"), tiny_tokenizer_path, {"vocab_size": 512, "seq_len": 32, "n_embd": 32, "n_layer": 1, "n_head": 2}, PHASE)


def sweep_plan(out: Path, grid: Path, base: Path | None = None, **over) -> SweepPlan:
    settings = load_settings(base, environ={})
    kw = dict(settings=settings, device="cpu", out_dir=out, grid_file=grid, timeout_s=60.0, max_micro_b=MAX_B,
              hours=0.01, memory_gb=MEMORY_GB, batch_tokens=256, base_config=base)
    return SweepPlan(**{**kw, **over})


@pytest.fixture(scope="module")
def swept(tmp_path_factory, workspace):
    """One real sweep of two configs; returns (report, plan)."""
    root = tmp_path_factory.mktemp("sweep")
    grid = write_grid(root / "grid.json", [SMALL, BIG_CONTEXT])
    plan = sweep_plan(root / "bench", grid, workspace, write_config=root / "configs" / "overnight.json")
    return prepare_sweep(plan).run(), plan


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- the sweep


def test_sweep_records_every_trial_and_finds_the_fit_envelopes(swept):
    report, plan = swept
    records = read_results(plan.out_dir / "results.jsonl")
    assert len(records) == report.ran and report.reused == 0
    assert len({r["key"] for r in records}) == len(records)
    for r in records:
        assert {"key", "status", "spec", "fingerprint", "micro_b", "wall_s", "timeout_s", "config"} <= set(r)
        assert r["fingerprint"]["torch"] and r["fingerprint"]["device"] == "cpu"

    small, big = report.outcomes
    assert small.fit == Fit(MAX_B, "cap", f"--max-micro-b {MAX_B}")
    assert small.fit_ckpt is None  # the cap, not memory, bounded it: checkpointing cannot move it
    assert [(t.micro_b, t.checkpointing, t.status) for t in small.timings] == [(4, False, "ok"), (2, False, "ok")]
    # AMP really computes in bf16: every Linear output is bf16 (norm statistics stay fp32 by design).
    assert small.precision == "bf16 autocast" and small.amp_low_precision is True
    assert set(small.dtypes["Linear"]) == {"bfloat16"} and set(small.dtypes["RMSNorm"]) == {"float32"}
    first = records[0]
    assert first["spec"]["kind"] == "fit" and first["micro_b"] == 1 and len(first["step_s"]) == 2

    assert big.fit.limit == "memory" and 1 <= big.fit.max_b < MAX_B and big.precision == "fp32"
    assert big.fit_ckpt is not None  # memory-bound: the checkpointing search ran
    ooms = [r for r in records if r["status"] == "oom"]
    assert ooms and all(r["spec"]["model"]["seq_len"] == BIG_CONTEXT["seq_len"] for r in ooms)
    assert any(r["micro_b"] == MAX_B and not r["spec"]["activation_checkpointing"] for r in ooms)
    assert all("allocate" in r["error"] or "MemoryError" in r["error"] for r in ooms)
    timed = [r for r in records if r["spec"]["kind"] == "time" and r["status"] == "ok"]
    assert timed and all(r["tokens_per_s"] > 0 and r["step_ms"] > 0 and len(r["step_s"]) >= 3 for r in timed)


def test_ranking_follows_the_90_percent_rule(swept):
    report, plan = swept
    ranked = report.ranked
    assert len(ranked) == 2 and ranked[0] is report.winner
    top = max(r.best.tokens_per_s for r in ranked)
    assert report.winner.best.tokens_per_s >= 0.9 * top
    contenders = [r for r in ranked if r.contender]
    assert ranked[: len(contenders)] == contenders  # contenders first
    assert all(report.winner.outcome.params >= r.outcome.params for r in contenders)
    rest = ranked[len(contenders):]
    assert [r.best.tokens_per_s for r in rest] == sorted((r.best.tokens_per_s for r in rest), reverse=True)

    summary = (plan.out_dir / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| 1") or line.startswith("| 2")]
    assert len(rows) == 2 and "★" in rows[0]
    for row, r in zip(rows, ranked):
        e = r.outcome.entry
        assert f"| {e.seq_len}/{e.n_embd}/{e.n_layer}/{e.n_head} |" in row  # one V in the grid: not repeated
        assert f"| {r.best.micro_b} |" in row
    assert "OOM at micro_B=" in summary and "Checkpointing:" in summary and "tokens in 36s" in summary


def test_a_busy_machine_is_called_out(swept):
    sweep = swept[0].sweep
    saved = sweep.max_load
    try:
        sweep.max_load = sweep.info.raw["threads"] + 0.5  # the trials' own threads: no warning
        assert busy_warning(sweep) is None
        sweep.max_load = sweep.info.raw["threads"] + 3.0
        assert f"load average reached {sweep.max_load:.1f}" in busy_warning(sweep)
    finally:
        sweep.max_load = saved


def test_rank_prefers_the_bigger_model_within_90_percent():
    def outcome(n_embd: int, params: int, tps: float, seq_len: int = 64) -> ConfigOutcome:
        entry = GridEntry(seq_len=seq_len, n_embd=n_embd, n_layer=2, n_head=2, vocab_size=512)
        return ConfigOutcome(entry, params, Fit(8, "cap", ""), timings=[
            Timing(8, False, "ok", tps, 1.0, None), Timing(4, False, "ok", tps * 0.8, 1.0, None)])

    fast_small, near_big, slow_huge, failed = (outcome(32, 5, 100.0), outcome(64, 10, 91.0),
                                               outcome(128, 40, 89.0), outcome(256, 80, 0.0))
    failed.timings = [Timing(8, False, "timeout", None, None, "killed")]
    ranked = rank([fast_small, slow_huge, failed, near_big])
    assert [r.outcome for r in ranked] == [near_big, fast_small, slow_huge]  # the failed config is not ranked
    assert [r.contender for r in ranked] == [True, True, False]
    assert ranked[0].best.micro_b == 8 and ranked[2].share == pytest.approx(0.89)
    assert failed.failure.startswith("no timing trial finished")

    # Same size within reach: the longer context first, however slightly slower; outside reach, by speed.
    short, long_, slow_long = outcome(32, 5, 100.0, seq_len=128), outcome(32, 5, 99.0, seq_len=256), outcome(
        32, 5, 50.0, seq_len=512)
    assert [r.outcome for r in rank([short, slow_long, long_])] == [long_, short, slow_long]


def test_written_config_loads_in_ngpt_train_and_trains(swept, workspace, tmp_path, capsys):
    report, plan = swept
    written = plan.write_config
    assert report.config_paths == [plan.out_dir / "overnight.json", written]
    data = json.loads(written.read_text())
    assert data == json.loads((plan.out_dir / "overnight.json").read_text())
    best, entry = report.winner.best, report.winner.outcome.entry
    t = data["pretrain"]
    assert data["model"]["n_embd"] == entry.n_embd and data["model"]["vocab_size"] == entry.vocab_size
    assert t["micro_batch"] == best.micro_b and t["activation_checkpointing"] == best.checkpointing
    assert t["amp"] == entry.amp and t["max_time"] == "36s" and t["device"] == "cpu"
    micro_tokens = best.micro_b * entry.seq_len
    assert t["accum_steps"] == max(1, round(256 / micro_tokens))
    assert t["total_steps"] == max(1, int(0.9 * best.tokens_per_s * 36 / (micro_tokens * t["accum_steps"])))
    assert data["data"]["cache_dir"] == json.loads(workspace.read_text())["data"]["cache_dir"]  # stands alone

    capsys.readouterr()
    assert ngpt_cli("train", "pretrain", "--print-config", "-c", written) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pretrain"]["micro_batch"] == best.micro_b and printed["model"]["n_embd"] == entry.n_embd

    # Which config wins depends on this machine's timings; BIG_CONTEXT's T=512 windows fit the fixture's
    # gutenberg val split (8k tokens) but not its wikitext one (436).
    settings = load_settings(written, environ={}, overrides={
        "data": {"val_pretrain_source": "gutenberg"},
        "pretrain": {"total_steps": 3, "max_time": None, "eval_every": 3, "ckpt_every": 3},
        "checkpoints_dir": str(tmp_path / "ckpt"), "runs_dir": str(tmp_path / "runs")})
    result = run_phase(settings, "pretrain", show=False)
    assert result.step == 3 and result.latest is not None
    assert math.isfinite(result.metrics["train_loss"])
    assert result.metrics["tokens"] == 3 * micro_tokens * t["accum_steps"]


def test_an_interrupted_sweep_resumes_where_it_stopped(swept, tmp_path):
    report, plan = swept
    out = tmp_path / "bench"
    shutil.copytree(plan.out_dir, out)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    kept = len(lines) - 2
    # Killed mid-append: a prefix of the trials, then half a line.
    (out / "results.jsonl").write_text("".join(lines[:kept]) + lines[kept][: len(lines[kept]) // 2])

    resumed_sweep = prepare_sweep(sweep_plan(out, plan.grid_file, plan.base_config))
    assert resumed_sweep.store.dropped_torn_line
    resumed = resumed_sweep.run()
    assert (resumed.reused, resumed.ran) == (kept, len(lines) - kept)
    records = read_results(out / "results.jsonl")
    assert len(records) == len(lines) and [r["key"] for r in records[:kept]] == [json.loads(x)["key"] for x in lines[:kept]]

    # Everything stored now: through the command, no trial runs again and the same table prints.
    app = typer.Typer()
    app.command()(sweep_command)
    result = CliRunner().invoke(app, ["--device", "cpu", "--grid", str(plan.grid_file), "--out", str(out),
                                      "--timeout-s", str(plan.timeout_s),
                                      "--max-micro-b", str(MAX_B), "--memory-gb", str(MEMORY_GB),
                                      "--hours", "0.01", "--batch-tokens", "256", "-c", str(plan.base_config)],
                             terminal_width=200)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"0 trials run, {len(lines)} reused" in result.output
    assert "overnight throughput" in result.output and "1 ★" in result.output and "reused" in result.output
    assert len(read_results(out / "results.jsonl")) == len(lines)


def test_a_hanging_trial_is_killed_at_the_timeout_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_SLEEP_ENV, "60")  # every fit/time trial sleeps a minute before starting
    grid = write_grid(tmp_path / "grid.json", [SMALL])
    t0 = time.perf_counter()
    report = prepare_sweep(sweep_plan(tmp_path / "bench", grid, timeout_s=2.0)).run()
    assert time.perf_counter() - t0 < 30
    (record,) = read_results(tmp_path / "bench" / "results.jsonl")
    assert record["status"] == "timeout" and record["micro_b"] == 1 and 2.0 <= record["wall_s"] < 10
    assert "killed after 2 s" in record["error"]
    assert report.winner is None and report.config_paths == []
    assert report.outcomes[0].failure == "micro_B=1 did not run: timeout at micro_B=1"
    assert "No config could be timed" in (tmp_path / "bench" / "summary.md").read_text()

    # A re-run with the same timeout keeps the timeout; a longer timeout measures it again.
    store = ResultStore(tmp_path / "bench" / "results.jsonl")
    assert store.reusable(record["key"], 2.0) is not None and store.reusable(record["key"], 5.0) is None


@pytest.mark.parametrize("info, seq_lens, n_sizes, amps", [
    ({"device": "cuda", "total_memory_bytes": 8 * 2**30}, {256, 512}, 2, {"true"}),
    ({"device": "cuda", "total_memory_bytes": 12 * 2**30}, {256, 512}, 2, {"true"}),
    ({"device": "cuda:1", "total_memory_bytes": 80 * 2**30}, {512, 1024}, 3, {"true"}),
    ({"device": "mps", "total_memory_bytes": 16 * 2**30}, {256, 512}, 2, {"false"}),
    ({"device": "cpu", "total_memory_bytes": 8 * 2**30, "bf16": True}, {128, 256}, 2, {"false", "true"}),
    ({"device": "cpu", "total_memory_bytes": 8 * 2**30, "bf16": False}, {128, 256}, 2, {"false"}),
])
def test_default_grids_follow_the_device(info, seq_lens, n_sizes, amps):
    name, grid = default_grid(DeviceInfo(info), vocab_size=1000)
    assert {e.seq_len for e in grid} == seq_lens and {e.amp for e in grid} == amps
    assert len({(e.n_embd, e.n_layer, e.n_head) for e in grid}) == n_sizes
    assert len(grid) == len(seq_lens) * n_sizes * len(amps) and all(e.vocab_size == 1000 for e in grid)
    assert all(e.n_embd % e.n_head == 0 for e in grid) and name.startswith("default grid for")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, match", [
    ('[{"seq_len": 32,', r"not valid JSON: line 1, column 17: Expecting property name"),
    ('[{"T": 32, "n_embd": 32, "n_layer": 1, "n_head": 2}]', r"entry 1: unknown key\(s\) 'T' \(did you mean 'seq_len'\?\)"),
    ('[{"seq_len": 32, "n_embd": 32, "n_layer": 1, "n_head": 2, "lr": 1}]', r"unknown key\(s\) 'lr'.*Valid keys: seq_len"),
    ('{"seq_len": 32}', r"non-empty JSON list of configs"),
    ('[]', r"non-empty JSON list of configs"),
    ('[{"seq_len": 32, "n_embd": 32, "n_layer": 1}]', r"entry 1: missing 'n_head'"),
    ('[{"seq_len": 32, "n_embd": 30, "n_layer": 1, "n_head": 4}]', r"not divisible by model.n_head=4"),
    ('[{"seq_len": 32, "n_embd": 32, "n_layer": 1, "n_head": 2, "amp": "yes"}]', r"amp=\"yes\"; use one of auto, true, false"),
    ('[{"seq_len": 32.5, "n_embd": 32, "n_layer": 1, "n_head": 2}]', r"seq_len=32.5 must be whole numbers"),
    ('[{"seq_len": 32, "n_embd": 32, "n_layer": 1, "n_head": 2}, {"seq_len": 32, "n_embd": 32, "n_layer": 1, "n_head": 2}]',
     r"entry 2 repeats entry 1"),
])
def test_bad_grid_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "grid.json"
    path.write_text(content)
    with pytest.raises(SweepError, match=match) as err:
        load_grid(path, vocab_size=512)
    assert str(path) in str(err.value)


def test_bad_grid_fails_before_any_trial_through_the_command(tmp_path):
    app = typer.Typer()
    app.command()(sweep_command)
    grid = write_grid(tmp_path / "grid.json", [{**SMALL, "dropout": 0.1}])
    result = CliRunner().invoke(app, ["--device", "cpu", "--grid", str(grid), "--out", str(tmp_path / "bench")])
    assert isinstance(result.exception, SweepError) and "unknown key(s) 'dropout'" in str(result.exception)
    assert not (tmp_path / "bench").exists()


def test_a_corrupt_results_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a", "status": "ok"}\nnot json\n{"key": "b", "status": "ok"}\n')
    with pytest.raises(SweepError, match=r"results.jsonl, line 2 is not valid JSON.*delete that line"):
        ResultStore(path)


def test_duration_text_is_what_max_time_parses():
    from ngpt.settings import parse_duration

    for hours in (8, 1.5, 0.01, 0.25, 10 / 3600):
        assert parse_duration(duration_text(hours)) == pytest.approx(round(hours * 3600))
    assert duration_text(8) == "8h" and duration_text(1.5) == "1h30m" and duration_text(0.01) == "36s"
