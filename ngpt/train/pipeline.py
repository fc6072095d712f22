"""The pretrain → SFT pipeline, and where SFT starts from: what `ngpt train sft|pipeline` run.

    results = run_pipeline(settings, raw_overrides=raw)             # pretrain, then SFT from its best.pt
    run_phase(settings, "sft", init_from=sft_init(settings, None))  # SFT alone, from pretrain's best.pt

A re-run resumes each phase from its own latest.pt (unless no_resume), so a killed pipeline
continues where it stopped. When eval.tasks or eval.text are set, everything they name is read and
checked before pretraining starts, and the final model (SFT's best.pt) is evaluated at the end:
eval.json beside it, and an eval section (table + eval.png) in the SFT run's report.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from ngpt.settings import Settings, prune_none, read_config_file
from ngpt.train.loop import PhaseResult, run_phase


def raw_overrides(config: Path | None, flags: dict) -> dict:
    """What the user asked for, as given (recorded in checkpoints next to the resolved settings)."""
    return {"config_file": str(config) if config else None,
            "config": read_config_file(config) if config else {}, "flags": prune_none(flags)}


def sft_init(settings: Settings, init_from: Path | None) -> Path:
    """The weights SFT starts from: --init-from, else pretrain's best.pt; an error when neither exists.

    A resumable SFT run (its own latest.pt) needs no init: resuming takes precedence in run_phase.
    """
    init = init_from or Path(settings.checkpoints_dir) / "pretrain" / "best.pt"
    if not init.is_file() and not (Path(settings.checkpoints_dir) / "sft" / "latest.pt").is_file():
        raise FileNotFoundError(
            f"SFT starts from pretrained weights, but {init} does not exist. Run `ngpt train pretrain` first, "
            "or pass --init-from PATH."
        )
    return init


def run_pipeline(settings: Settings, *, raw_overrides: dict | None = None, no_resume: bool = False,
                 run_id: str | None = None) -> list[PhaseResult]:
    """Pretrain, then SFT initialised from pretrain's best.pt (then eval.*, when set); the two phases' results."""
    eval_runs = _check_eval(settings)
    first = run_phase(settings, "pretrain", raw_overrides=raw_overrides, no_resume=no_resume,
                      run_id=run_id and f"{run_id}-pretrain")
    if first.best is None:
        raise RuntimeError("pretrain produced no best.pt (no evaluation ran); cannot start SFT.")
    second = run_phase(settings, "sft", raw_overrides=raw_overrides, no_resume=no_resume, init_from=first.best,
                       run_id=run_id and f"{run_id}-sft")
    # Under torchrun every rank returns here; rank 0 alone evaluates (and writes files), as it alone saves.
    if (settings.eval.tasks or settings.eval.text) and os.environ.get("RANK", "0") == "0":
        evaluate_final(settings, second, eval_runs)
    return [first, second]


def _check_eval(settings: Settings) -> list:
    """The eval tasks, every file eval.text and eval.tasks name read and checked: a bad one fails before step 0."""
    if not (settings.eval.tasks or settings.eval.text):
        return []
    from ngpt.eval.runner import check_settings

    return check_settings(settings)


def evaluate_final(settings: Settings, result: PhaseResult, eval_runs: list) -> dict:
    """eval.text / eval.tasks on the phase's best (else latest) checkpoint; the eval section of its report.md."""
    from ngpt.console import console, kv_table, table
    from ngpt.eval.progress import rich_tracker
    from ngpt.eval.runner import evaluate_settings
    from ngpt.eval.summary import headline, task_rows
    from ngpt.train.report import write_eval_section

    ckpt = result.best or result.latest
    ev = settings.eval
    console.print(kv_table("eval (end of pipeline)", {
        "checkpoint": ckpt, "text": ", ".join(ev.text) or "—", "tasks": ", ".join(ev.tasks) or "—",
        "shots": ev.shots, "limit": ev.limit or "all", "chat": ev.chat}))
    with rich_tracker() as track:
        record = evaluate_settings(settings, ckpt, eval_runs or None, progress=track, device=settings.sft.device)
    if record.get("tasks"):
        console.print(table(headline(record), *task_rows(record)))
    if "bpb" in record:
        console.print(f"bits/byte on {record['bpb']['source']}: {record['bpb']['bpb']:.4f}")
    report = write_eval_section(result.run_dir, record, ckpt)
    console.print(f"eval section written to {report}")
    return record
