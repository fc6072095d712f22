"""The pretrain → SFT pipeline, and where SFT starts from: what `ngpt train sft|pipeline` run.

    results = run_pipeline(settings, raw_overrides=raw)             # pretrain, then SFT from its best.pt
    run_phase(settings, "sft", init_from=sft_init(settings, None))  # SFT alone, from pretrain's best.pt

A re-run resumes each phase from its own latest.pt (unless no_resume), so a killed pipeline
continues where it stopped.
"""

from __future__ import annotations

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
    """Pretrain, then SFT initialised from pretrain's best.pt; the two phases' results."""
    first = run_phase(settings, "pretrain", raw_overrides=raw_overrides, no_resume=no_resume,
                      run_id=run_id and f"{run_id}-pretrain")
    if first.best is None:
        raise RuntimeError("pretrain produced no best.pt (no evaluation ran); cannot start SFT.")
    second = run_phase(settings, "sft", raw_overrides=raw_overrides, no_resume=no_resume, init_from=first.best,
                       run_id=run_id and f"{run_id}-sft")
    return [first, second]
