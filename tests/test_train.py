"""Training: schedule, checkpoints, grad accumulation, the three commands, exact resume, DDP, failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures import ngpt_cli, write_workspace
from ngpt.model import GPT
from ngpt.settings import ModelSettings, TrainSettings, load_settings
from ngpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ngpt.train.loop import TrainingDiverged, run_phase
from ngpt.train.optim import make_optimizer
from ngpt.metrics import METRIC_KEYS, read_metrics
from ngpt.train.schedule import budget_progress, lr_factor, muon_momentum

TINY_MODEL = {"vocab_size": 384, "seq_len": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}
PHASE = {"micro_batch": 2, "accum_steps": 2, "eval_every": 3, "ckpt_every": 3, "eval_batches": 2,
         "warmup_steps": 2, "amp": "false", "device": "cpu", "total_steps": 6}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_tokenizer_path) -> Path:
    """Fixture sources + the tiny tokenizer + every cache built by `ngpt cache build-all`; returns the config."""
    return write_workspace(tmp_path_factory.mktemp("ws"), tiny_tokenizer_path, TINY_MODEL, PHASE)


def settings_for(config: Path, tmp_path: Path, **phase_overrides):
    over = {"checkpoints_dir": str(tmp_path / "ckpt"), "runs_dir": str(tmp_path / "runs")}
    for phase in ("pretrain", "sft"):
        over[phase] = phase_overrides
    return load_settings(config, overrides=over, environ={})


# ---------------------------------------------------------------- units


def test_cosine_schedule_contract():
    cfg = TrainSettings(schedule="cosine", warmup_steps=10, total_steps=100, final_lr_frac=0.1)
    f = [lr_factor(s, budget_progress(s, 0, 0.0, cfg), cfg) for s in range(101)]
    assert f[0] == 0.0 and f[10] == pytest.approx(0.5 * 0.9 * (1 + math.cos(math.pi * 0.1)) + 0.1)
    assert f[100] == pytest.approx(0.1) and f[99] == pytest.approx(0.1, rel=1e-2)
    assert all(a < b for a, b in zip(f[:10], f[1:11]))  # warmup rises
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # cosine falls
    assert budget_progress(500, 0, 0.0, cfg) == 1.0  # clamped after the end


@pytest.mark.parametrize("budget", ["steps", "tokens", "time"])
def test_wsd_schedule_follows_whichever_budget_ends_first(budget):
    """Warmup, stable at 1, then a linear warmdown over the last 40 % of the budget, reaching final_lr_frac at its end."""
    limits = {"steps": {}, "tokens": {"max_tokens": 1000}, "time": {"max_time": "50s"}}[budget]
    cfg = TrainSettings(schedule="wsd", warmup_steps=5, warmdown_frac=0.4, final_lr_frac=0.0, total_steps=10**6, **limits)
    if budget == "steps":
        cfg = cfg.model_copy(update={"total_steps": 100})
    # the run's clocks at step s: 10 tokens and 0.5 s per step, so each budget ends at step 100
    progress = [budget_progress(s, 10 * s, 0.5 * s, cfg) for s in range(101)]
    f = [lr_factor(s, p, cfg) for s, p in zip(range(101), progress)]
    assert progress[100] == 1.0 and progress[50] == pytest.approx(0.5)
    assert f[0] == 0.0 and all(x == 1.0 for x in f[5:61])  # stable until 60 % of the budget
    assert f[80] == pytest.approx(0.5) and f[100] == 0.0  # halfway down, then final_lr_frac when the budget ends
    assert all(a >= b for a, b in zip(f[60:], f[61:]))


def test_muon_momentum_warms_up_linearly():
    cfg = TrainSettings(muon_momentum_start=0.85, muon_momentum=0.95, muon_momentum_warmup_steps=300)
    assert muon_momentum(0, cfg) == 0.85 and muon_momentum(150, cfg) == pytest.approx(0.90)
    assert muon_momentum(300, cfg) == muon_momentum(10**6, cfg) == 0.95


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelSettings(**TINY_MODEL))
    opt = make_optimizer(model, TrainSettings(optimizer="adamw", lr=1e-3), model.cfg, torch.device("cpu"), 64)
    x = torch.randint(0, 384, (2, 32))
    model(x, x)[1].backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", {"version": 1, "model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7})
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k
    model2 = GPT(ModelSettings(**TINY_MODEL))
    model2.load_state_dict(state["model"])
    opt2 = make_optimizer(model2, TrainSettings(optimizer="adamw", lr=1e-3), model2.cfg, torch.device("cpu"), 64)
    opt2.load_state_dict(state["optimizer"])
    for (a, b) in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"version": 1, "model": {}})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_accumulation_matches_the_doubled_batch():
    torch.manual_seed(0)
    model = GPT(ModelSettings(**TINY_MODEL))
    x = torch.randint(0, 384, (4, 32))
    y = torch.randint(0, 384, (4, 32))
    model(x, y)[1].backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for half in (slice(0, 2), slice(2, 4)):
        (model(x[half], y[half])[1] / 2).backward()
    for a, p in zip(full, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-6)


def test_sft_loss_ignores_masked_labels_and_default_val_source_is_sft():
    assert load_settings(environ={}).data.val_sft_source == "sft"
    torch.manual_seed(0)
    model = GPT(ModelSettings(**TINY_MODEL))
    x = torch.randint(0, 384, (1, 32))
    y = x.clone()
    y[:, :20] = -100
    logits, loss = model(x, y)
    manual = torch.nn.functional.cross_entropy(logits[0, 20:], y[0, 20:])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


# ---------------------------------------------------------------- commands


def test_pretrain_sft_pipeline_write_checkpoints_in_place(workspace, tmp_path):
    ckpt, runs = tmp_path / "ckpt", tmp_path / "runs"
    over = ["--source", f"roam={tmp_path}"]  # harmless extra flag: roam is not in the mix
    env_cfg = tmp_path / "c.json"
    cfg = json.loads(workspace.read_text())
    cfg["checkpoints_dir"], cfg["runs_dir"] = str(ckpt), str(runs)
    env_cfg.write_text(json.dumps(cfg))
    assert ngpt_cli("train", "pipeline", "-c", env_cfg, *over) == 0
    for phase in ("pretrain", "sft"):
        names = sorted(p.name for p in (ckpt / phase).iterdir())
        assert names == ["best.pt", "latest.pt", "step_0000003.pt", "step_0000006.pt"], names
        assert load_checkpoint(ckpt / phase / "latest.pt")["step"] == 6
    assert (ckpt / "latest.pt").is_file() and (ckpt / "best.pt").is_file()
    assert load_checkpoint(ckpt / "best.pt")["phase"] == "sft"  # root copy follows the last phase
    run_dirs = sorted(runs.iterdir())
    assert len(run_dirs) == 2
    for d in run_dirs:
        assert {"metrics.jsonl", "resolved_settings.json", "report.md", "loss.png"} <= {p.name for p in d.iterdir()}
        records = read_metrics(d / "metrics.jsonl")
        keys = set().union(*records)
        assert {"train_loss", "lr", "tokens_per_s", "mfu", "val_pretrain_loss", "val_sft_loss", "val_bpb"} <= keys
        assert keys <= set(METRIC_KEYS) | {"phase", "step", "tokens"}

    # sft alone starts from pretrain's best.pt; pretrain alone resumes (already finished → no new steps)
    assert ngpt_cli("train", "sft", "-c", env_cfg, "--no-resume", "--total-steps", "3") == 0
    assert load_checkpoint(ckpt / "sft" / "latest.pt")["step"] == 3
    assert ngpt_cli("train", "pretrain", "-c", env_cfg) == 0


def test_missing_cache_for_a_mixed_source_fails_before_step_0(workspace, tmp_path):
    s = load_settings(workspace, overrides={"data": {"mix_pretrain": {"wikitext": 0.5, "fineweb_edu": 0.5}},
                                            "checkpoints_dir": str(tmp_path / "ck")}, environ={})
    with pytest.raises(FileNotFoundError) as e:
        run_phase(s, "pretrain", show=False)
    assert "pretrain/fineweb_edu/meta.json" in str(e.value) and "pretrain/fineweb_edu/train/" in str(e.value)
    assert not (tmp_path / "ck").exists()


def test_tokenizer_cache_mismatch_fails_before_step_0(workspace, tmp_path):
    from conftest import synthetic_text
    from ngpt.tokenizer import SourceSample, train_tokenizer

    train_tokenizer([SourceSample("x", [synthetic_text(500, seed=9)], "t")], tmp_path / "tok", 400, seed=1, threads=1)
    s = load_settings(workspace, overrides={"tokenizer": {"model_path": str(tmp_path / "tok" / "spm.model")}}, environ={})
    with pytest.raises(ValueError, match="another tokenizer|built with tokenizer"):
        run_phase(s, "pretrain", show=False)


def test_resume_with_another_shape_lists_each_field(workspace, tmp_path):
    s = settings_for(workspace, tmp_path, total_steps=3, **{k: v for k, v in PHASE.items() if k != "total_steps"})
    run_phase(s, "pretrain", show=False)
    bigger = load_settings(workspace, overrides={"checkpoints_dir": str(tmp_path / "ckpt"),
                                                  "model": {"n_embd": 64, "n_layer": 3}}, environ={})
    with pytest.raises(CheckpointError) as e:
        run_phase(bigger, "pretrain", show=False)
    assert "model.n_embd: checkpoint 32 != settings 64" in str(e.value)
    assert "model.n_layer: checkpoint 2 != settings 3" in str(e.value)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(workspace, tmp_path, monkeypatch):
    s = settings_for(workspace, tmp_path, total_steps=10, **{k: v for k, v in PHASE.items() if k != "total_steps"})
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 8:  # 2 micro-batches per step: steps 0-3 are fine, step 4 diverges
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    with pytest.raises(TrainingDiverged, match="at step 4"):
        run_phase(s, "pretrain", show=False)
    assert load_checkpoint(tmp_path / "ckpt" / "pretrain" / "latest.pt")["step"] == 3


def _train_losses(run_dir_root: Path) -> dict[int, float]:
    (run_dir,) = list(run_dir_root.iterdir())
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "train_loss" in r}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_kill_9_then_resume_continues_exactly(workspace, tmp_path, optimizer):
    """A run killed with SIGKILL and resumed logs the very same losses as an uninterrupted one (CPU fp32)."""
    steps = 120
    phase = {**PHASE, "total_steps": steps, "ckpt_every": 5, "eval_every": 1000, "accum_steps": 1, "micro_batch": 1,
             "optimizer": optimizer, "schedule": "wsd", "muon_momentum_warmup_steps": 50}

    def config(name: str) -> Path:
        cfg = json.loads(workspace.read_text())
        cfg["pretrain"] = phase
        cfg["checkpoints_dir"], cfg["runs_dir"] = str(tmp_path / name / "ckpt"), str(tmp_path / name / "runs")
        cfg["model"] = {**TINY_MODEL, "n_layer": 1}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg))
        return path

    reference = config("reference")
    assert ngpt_cli("train", "pretrain", "-c", reference) == 0
    expected = _train_losses(tmp_path / "reference" / "runs")
    assert len(expected) == steps

    killed = config("killed")
    cmd = [sys.executable, "-m", "ngpt", "train", "pretrain", "-c", str(killed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    latest = tmp_path / "killed" / "ckpt" / "pretrain" / "latest.pt"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed_from = load_checkpoint(latest)["step"]
    assert 0 < resumed_from < steps

    assert ngpt_cli("train", "pretrain", "-c", killed) == 0
    got = _train_losses(tmp_path / "killed" / "runs")
    assert {s: got[s] for s in range(resumed_from + 1, steps + 1)} == {s: expected[s] for s in range(resumed_from + 1, steps + 1)}


def test_ddp_two_processes_on_cpu_match_single_process(workspace, tmp_path):
    phase = {**PHASE, "total_steps": 30, "eval_every": 30, "ckpt_every": 30, "accum_steps": 2, "lr": 3e-3}

    def config(name: str) -> Path:
        cfg = json.loads(workspace.read_text())
        cfg["pretrain"] = phase
        cfg["checkpoints_dir"], cfg["runs_dir"] = str(tmp_path / name / "ckpt"), str(tmp_path / name / "runs")
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg))
        return path

    single = config("single")
    assert ngpt_cli("train", "pretrain", "-c", single) == 0
    ddp = config("ddp")
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "ngpt", "train", "pretrain", "-c", str(ddp)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a = _train_losses(tmp_path / "single" / "runs")
    b = _train_losses(tmp_path / "ddp" / "runs")
    assert set(a) == set(b) == set(range(1, 31))
    assert b[1] == pytest.approx(a[1], rel=0.02)  # same init; each rank sees its own data
    assert abs(sum(b[k] for k in range(26, 31)) - sum(a[k] for k in range(26, 31))) / 5 < 0.15 * a[30]
    (run_dir,) = list((tmp_path / "ddp" / "runs").iterdir())
    first = next(r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "tokens" in r)
    assert first["step"] == 1 and first["tokens"] == 2 * 2 * 2 * 32  # micro_B × accum × world × T: the global batch
    assert math.isfinite(b[30])


def test_resuming_with_another_optimizer_fails_before_step_0_naming_the_key(workspace, tmp_path):
    first = settings_for(workspace, tmp_path, total_steps=3, ckpt_every=3, eval_every=3)
    run_phase(first, "pretrain", show=False)
    other = settings_for(workspace, tmp_path, total_steps=6, optimizer="adamw")
    with pytest.raises(CheckpointError, match=r"pretrain\.optimizer=muon.*adamw.*--no-resume"):
        run_phase(other, "pretrain", show=False)


def test_resuming_with_muon_split_the_other_way_fails_naming_the_key(workspace, tmp_path):
    """Muon Split groups q, k, v and o apart, so a state saved one way cannot load into the other's groups."""
    first = settings_for(workspace, tmp_path, total_steps=3, ckpt_every=3, eval_every=3, muon_split_heads=False)
    run_phase(first, "pretrain", show=False)
    other = settings_for(workspace, tmp_path, total_steps=6, muon_split_heads=True)
    with pytest.raises(CheckpointError, match=r"pretrain\.muon_split_heads=false.*true.*--no-resume"):
        run_phase(other, "pretrain", show=False)


def test_parse_duration():
    from ngpt.settings import parse_duration

    assert parse_duration("8h") == 8 * 3600 and parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    assert parse_duration(None) is None
    with pytest.raises(ValueError, match="duration like"):
        parse_duration("eight hours")


class CountingWrapper(torch.nn.Module):
    """What the fake torch.compile returns: the model, called through a counter."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def _quick_compile_policy(monkeypatch, tmp_path):
    from ngpt.train import compile_policy

    monkeypatch.setenv("NGPT_MEASURED_CACHE", str(tmp_path / "measured.json"))  # records: this test's own

    for name, value in {"WARMUP_STEPS": 1, "PROBE_STEPS": 2, "CHECK_STEPS": 2, "MIN_SECONDS_LEFT": 0.0}.items():
        monkeypatch.setattr(compile_policy, name, value)


@pytest.mark.parametrize("outcome", ["kept", "not faster", "fails"])
def test_compile_auto_switches_mid_run_and_trains_as_eager_does(workspace, tmp_path, monkeypatch, outcome):
    """compile: auto with a fake torch.compile (the real one is tests/test_model.py's): the run switches
    after its timed eager steps; a compile that raises is redone eager from the same batches. Either
    way the losses are exactly an eager run's."""
    phase = {**PHASE, "total_steps": 8, "eval_every": 1000}
    eager = run_phase(settings_for(workspace, tmp_path / "eager", **phase, compile=False), "pretrain", show=False)
    _quick_compile_policy(monkeypatch, tmp_path)
    from ngpt.train import compile_policy

    monkeypatch.setattr(compile_policy, "MIN_SPEEDUP", 0.0 if outcome == "kept" else math.inf)
    wrappers = []

    def fake_compile(model, **kwargs):
        if outcome == "fails":
            def broken(*args, **kwargs):
                raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
            return broken
        wrappers.append(CountingWrapper(model))
        return wrappers[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    auto = run_phase(settings_for(workspace, tmp_path / "auto", **phase, compile="auto"), "pretrain", show=False)
    if outcome != "fails":
        # 3 eager steps timed, then compiled: the first + 2 timed, then kept (steps 4-8) or not (4-6).
        compiled_steps = 5 if outcome == "kept" else 3
        assert len(wrappers) == 1 and wrappers[0].calls == compiled_steps * PHASE["accum_steps"]
    assert _train_losses(tmp_path / "auto" / "runs") == _train_losses(tmp_path / "eager" / "runs")
    assert auto.step == eager.step == 8
    said = {"kept": "auto: compiled: compiled steps", "not faster": "auto: back to eager: compiled steps",
            "fails": "auto: eager: torch.compile failed here (RuntimeError: InvalidCxxCompiler"}[outcome]
    assert said in (auto.run_dir / "report.md").read_text()


def test_compile_auto_remembers_a_failed_compile_and_the_next_run_does_not_try(workspace, tmp_path, monkeypatch):
    _quick_compile_policy(monkeypatch, tmp_path)
    calls = []

    def no_compiler(model, **kwargs):
        calls.append(model)

        def broken(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return broken

    monkeypatch.setattr(torch, "compile", no_compiler)
    phase = {**PHASE, "total_steps": 6, "eval_every": 1000, "compile": "auto"}
    run_phase(settings_for(workspace, tmp_path / "first", **phase), "pretrain", show=False)
    again = run_phase(settings_for(workspace, tmp_path / "again", **phase), "pretrain", show=False)
    assert len(calls) == 1  # the second run read the record and stayed eager
    assert "torch.compile failed here before (RuntimeError: InvalidCxxCompiler" in (again.run_dir / "report.md").read_text()
    assert _train_losses(tmp_path / "again" / "runs") == _train_losses(tmp_path / "first" / "runs")


def test_max_tokens_stops_before_total_steps(workspace, tmp_path):
    phase = {k: v for k, v in PHASE.items() if k != "total_steps"}
    s = settings_for(workspace, tmp_path, total_steps=100, max_tokens=3 * 2 * 2 * 32, **phase)
    result = run_phase(s, "pretrain", show=False)
    assert result.step == 3
    assert load_checkpoint(tmp_path / "ckpt" / "pretrain" / "latest.pt")["step"] == 3


def test_a_checkpoint_from_before_the_architecture_options_loads_as_the_classic_model(tmp_path):
    from fixtures import classic_model
    from ngpt.checkpoint import check_same_shape

    cfg = ModelSettings(**TINY_MODEL, **classic_model())
    old_config = {k: v for k, v in cfg.model_dump().items() if k not in classic_model() and k != "zero_init"}
    save_checkpoint(tmp_path / "old.pt", {"version": 1, "model": GPT(cfg).state_dict(), "model_config": old_config})
    state = load_checkpoint(tmp_path / "old.pt")
    GPT(ModelSettings(**state["model_config"])).load_state_dict(state["model"])  # strict: every tensor fits
    with pytest.raises(CheckpointError, match=r"model\.mlp: checkpoint 'swiglu' != settings 'relu2'"):
        check_same_shape(state["model_config"], ModelSettings(**TINY_MODEL).model_dump(), tmp_path / "old.pt")
