"""How much a config learns in a fixed budget: train it for a wall time or a token count, score val bits/byte.

    ngpt bench learn -c configs/shakespeare.json --max-time 110s
    ngpt bench learn -c configs/shakespeare.json --max-time 110s --ablate pretrain.optimizer=adamw,muon
    ngpt bench learn -c configs/chat.json --phase sft --init-from ckpt.pt --max-time 60s --ablate sft.lr=3e-4,1e-3

    result = run_learn(settings, Path("bench/learn/baseline"))            # one run, in this process
    rows = run_ablation(LearnPlan(...))                                   # baseline + variants, fresh processes

A run is `ngpt train pretrain` with its checkpoints and run records under --out (the user's own
checkpoints stay untouched), no evaluation until the budget ends, then bits per byte over the *whole*
val split of data.val_pretrain_source (ngpt.eval.bpb: non-overlapping windows, every target once,
fp32). An ablation runs the baseline and each `KEY=VALUE` variant in a fresh process with the same
seed and budget, so every run starts from the same state, and compares their bits/byte.

`phase="sft"` fine-tunes the checkpoint given as init_from (`ngpt train sft --init-from`) under the
sft section's settings and budget, and scores every example of the val splits of data.mix_sft's
sources once, each alone in its row: bits per byte and loss per token over the assistant tokens SFT
trains on (ngpt.eval.bpb.examples_bpb).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngpt.settings import Settings, SettingsError, deep_merge

NO_EVAL = 10**9  # eval_every / ckpt_every for a budget run: evaluate and save only when it stops
STEPS_UNBOUNDED = 10**9  # total_steps when a time or token budget is what ends the run


PHASES = ("pretrain", "sft")


def budget_overrides(max_time: str | None, max_tokens: int | None, phase: str = "pretrain") -> dict:
    """The phase's settings a budget run adds: the budget, and nothing else that stops or evaluates early."""
    # eval_batches 1: the loop still evaluates at step 0 and at the end; the score is the whole-split one below
    keys: dict = {"eval_every": NO_EVAL, "ckpt_every": NO_EVAL, "keep_last": 1, "eval_batches": 1}
    if max_time is not None or max_tokens is not None:
        keys |= {"total_steps": STEPS_UNBOUNDED, "max_time": max_time, "max_tokens": max_tokens}
    return {phase_key(phase): keys}


def phase_key(phase: str) -> str:
    if phase not in PHASES:
        raise SettingsError(f"--phase {phase!r}: choose one of {', '.join(PHASES)}")
    return phase


def parse_assignment(text: str, flag: str) -> tuple[str, list]:
    """'pretrain.optimizer=adamw,muon' → ("pretrain.optimizer", ["adamw", "muon"]); values are JSON where they parse.

    Commas inside brackets or quotes belong to one value: 'pretrain.adam_betas=[0.9,0.95],[0.8,0.95]' is two.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key or not raw:
        raise SettingsError(f"{flag} expects KEY=VALUE[,VALUE...] with a dotted settings key, e.g. "
                            f"pretrain.optimizer=adamw,muon; got {text!r}")
    values = []
    for part in split_top_level(raw):
        try:
            values.append(json.loads(part))
        except json.JSONDecodeError:
            values.append(part)
    return key, values


def split_top_level(raw: str) -> list[str]:
    """Split on the commas outside [...], {...} and "..." (a JSON list or object is one value)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(raw):
        if ch == '"' and (i == 0 or raw[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0 and not quoted:
            parts.append(raw[start:i])
            start = i + 1
    return parts + [raw[start:]]


def nested(key: str, value) -> dict:
    """'model.qk_norm', True → {"model": {"qk_norm": True}}."""
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


@dataclass
class LearnResult:
    name: str
    overrides: dict
    steps: int
    tokens: int
    train_s: float
    val_bpb: float
    val_loss: float
    val_tokens: int
    params: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s if self.train_s else 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "overrides": self.overrides, "steps": self.steps, "tokens": self.tokens,
                "train_s": round(self.train_s, 2), "tokens_per_s": round(self.tokens_per_s, 1),
                "val_bpb": round(self.val_bpb, 5), "val_loss": round(self.val_loss, 5), "val_tokens": self.val_tokens,
                "params": self.params}


def val_stream(settings: Settings, tok) -> torch.Tensor:
    """Every token of the val split of data.val_pretrain_source, documents joined by <|eot|> as cached."""
    from ngpt.tokcache.reader import PretrainReader

    reader = PretrainReader.open(settings.data.cache_dir, settings.data.val_pretrain_source, "val", tok)
    return torch.from_numpy(np.concatenate([np.asarray(t, dtype=np.int64) for t in reader.tokens]))


def sft_val_examples(settings: Settings, tok):
    """Every example (ids, labels) of the val split of each data.mix_sft source, in order."""
    from ngpt.tokcache.reader import SFTReader

    for source in settings.data.mix_sft:
        reader = SFTReader.open(settings.data.cache_dir, source, "val", tok)
        yield from (reader.example(i) for i in range(reader.num_examples))


def run_learn(settings: Settings, out_dir: Path, name: str = "baseline", overrides: dict | None = None,
              show: bool = True, phase: str = "pretrain", init_from: Path | None = None) -> LearnResult:
    """Train `settings` (already holding the budget) with records under out_dir/name; score the whole val split."""
    from ngpt.checkpoint import load_for_inference
    from ngpt.eval.bpb import examples_bpb, stream_bpb
    from ngpt.train.loop import run_phase

    where = out_dir / name
    settings = settings.model_copy(update={"checkpoints_dir": str(where / "checkpoints"), "runs_dir": str(where / "runs")})
    result = run_phase(settings, phase_key(phase), no_resume=True, init_from=init_from, run_id=name, show=show)
    model, tok, state = load_for_inference(result.latest)
    token_bytes = torch.from_numpy(tok.token_byte_lengths())
    if phase == "sft":
        acc = examples_bpb(model, sft_val_examples(settings, tok), token_bytes)
    else:
        acc = stream_bpb(model, val_stream(settings, tok), token_bytes)
    return LearnResult(name, overrides or {}, result.step, state["tokens_seen"], state.get("elapsed_s", 0.0),
                       acc.bpb, acc.loss, acc.tokens, model.num_params())


@dataclass
class LearnPlan:
    config: Path | None
    base_overrides: dict  # --source, --set and the budget, as CLI flags give them
    ablations: list[tuple[str, list]] = field(default_factory=list)
    out_dir: Path = Path("bench/learn")
    phase: str = "pretrain"
    init_from: Path | None = None  # the checkpoint an sft run starts from


def variants(plan: LearnPlan) -> list[tuple[str, dict]]:
    """(name, extra overrides): the baseline first, then each KEY=VALUE of each --ablate."""
    runs = [("baseline", {})]
    for key, values in plan.ablations:
        runs += [(f"{key}={json.dumps(v)}", nested(key, v)) for v in values]
    return runs


def run_in_subprocess(plan: LearnPlan, name: str, extra: dict) -> LearnResult:
    """One run in a fresh Python process: the same seed and a clean allocator/RNG/thread state for every variant."""
    result_file = plan.out_dir / f"{_slug(name)}.result.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ngpt", "bench", "learn", "--quiet", "--name", _slug(name),
           "--out", str(plan.out_dir), "--overrides-json", json.dumps(deep_merge(plan.base_overrides, extra)),
           "--result-file", str(result_file)]
    if plan.config is not None:
        cmd += ["-c", str(plan.config)]
    cmd += ["--phase", plan.phase] + (["--init-from", str(plan.init_from)] if plan.init_from is not None else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result_file.is_file():
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"bench learn run {name!r} failed (exit {proc.returncode}):\n{tail}")
    data = json.loads(result_file.read_text())
    return LearnResult(name, extra, data["steps"], data["tokens"], data["train_s"], data["val_bpb"], data["val_loss"],
                       data["val_tokens"], data["params"])


def comparison_rows(results: list[LearnResult]) -> tuple[tuple[str, ...], list[tuple]]:
    """The ablation table: the first result is the baseline every Δ is taken against."""
    header = ("run", "val bpb", "Δ vs baseline", "val loss", "steps", "tokens", "tokens/s", "params")
    base = results[0].val_bpb
    rows = [(r.name, f"{r.val_bpb:.4f}", "—" if i == 0 else f"{r.val_bpb - base:+.4f}", f"{r.val_loss:.4f}", str(r.steps),
             f"{r.tokens:,}", f"{r.tokens_per_s:,.0f}", f"{r.params:,}") for i, r in enumerate(results)]
    return header, rows


def markdown_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
