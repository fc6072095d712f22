"""`ngpt train pretrain|sft|pipeline`: resolve settings, then hand over to the training loop.

    ngpt train pretrain --config configs/pretrain.json
    ngpt train sft --config configs/sft.json              # starts from checkpoints/pretrain/best.pt
    ngpt train pipeline --config configs/pipeline.json    # pretrain, then SFT from pretrain's best.pt
    torchrun --nproc_per_node=2 -m ngpt train pretrain --config configs/pretrain.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ngpt.cli.common import ConfigOpt, PrintConfigOpt, SourceOpt, prune_none, resolve_settings
from ngpt.console import console, table
from ngpt.settings import read_config_file

app = typer.Typer(no_args_is_help=True)

ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Resume from this checkpoint (default: the phase's latest.pt).")]
NoResumeOpt = Annotated[bool, typer.Option("--no-resume", help="Start fresh even if the phase has a latest.pt.")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Name of runs/<run_id>/ (default: timestamp-phase).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")]
StepsOpt = Annotated[Optional[int], typer.Option("--total-steps", help="Optimizer steps for this phase.")]
MaxTimeOpt = Annotated[Optional[str], typer.Option("--max-time", help="Stop after this wall time, e.g. 8h, 90m.")]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="Stop after this many training tokens.")]
AmpOpt = Annotated[Optional[str], typer.Option("--amp", help="auto | true | false")]
MicroBOpt = Annotated[Optional[int], typer.Option("--micro-b", help="Sequences per micro-batch.")]
AccumOpt = Annotated[Optional[int], typer.Option("--accum-steps", help="Micro-batches per optimizer step.")]


def _phase_flags(phase: str, device, total_steps, max_time, max_tokens, amp, micro_b, accum_steps) -> dict:
    return {phase: {"device": device, "total_steps": total_steps, "max_time": max_time, "max_tokens": max_tokens,
                    "amp": amp, "micro_batch": micro_b, "accum_steps": accum_steps}}


def _raw_overrides(config: Path | None, flags: dict) -> dict:
    """What the user asked for, as given (recorded in checkpoints next to the resolved settings)."""
    return {"config_file": str(config) if config else None,
            "config": read_config_file(config) if config else {}, "flags": prune_none(flags)}


def _summary(results) -> None:
    rows = []
    for r in results:
        m = r.metrics
        rows.append((r.phase, r.step, f"{m.get('train_loss') or float('nan'):.4f}", f"{m.get('val_pretrain_loss', float('nan')):.4f}",
                     f"{m.get('val_sft_loss', float('nan')):.4f}", str(r.best or "-"), str(r.run_dir / "report.md")))
    console.print(table("done", ("phase", "step", "train_loss", "val_pretrain", "val_sft", "best", "report"), rows))


def _run(phase: str, config, source, flags, print_config, resume, no_resume, run_id, init_from=None):
    from ngpt.train.loop import run_phase  # torch + model import only when training

    settings = resolve_settings(config, source, flags, print_config)
    return run_phase(settings, phase, raw_overrides=_raw_overrides(config, flags), resume=resume,
                     no_resume=no_resume, init_from=init_from, run_id=run_id)


@app.command()
def pretrain(
    config: ConfigOpt = None, source: SourceOpt = None, resume: ResumeOpt = None, no_resume: NoResumeOpt = False,
    run_id: RunIdOpt = None, device: DeviceOpt = None, total_steps: StepsOpt = None, max_time: MaxTimeOpt = None,
    max_tokens: MaxTokensOpt = None, amp: AmpOpt = None, micro_b: MicroBOpt = None, accum_steps: AccumOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Pretrain on the pretrain mix (auto-resumes from checkpoints/pretrain/latest.pt)."""
    flags = _phase_flags("pretrain", device, total_steps, max_time, max_tokens, amp, micro_b, accum_steps)
    _summary([_run("pretrain", config, source, flags, print_config, resume, no_resume, run_id)])


@app.command()
def sft(
    config: ConfigOpt = None, source: SourceOpt = None, resume: ResumeOpt = None, no_resume: NoResumeOpt = False,
    init_from: Annotated[Optional[Path], typer.Option("--init-from", help="Weights to start from (default: checkpoints/pretrain/best.pt).")] = None,
    run_id: RunIdOpt = None, device: DeviceOpt = None, total_steps: StepsOpt = None, max_time: MaxTimeOpt = None,
    max_tokens: MaxTokensOpt = None, amp: AmpOpt = None, micro_b: MicroBOpt = None, accum_steps: AccumOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Supervised fine-tuning on the SFT mix, starting from the pretrained best.pt."""
    flags = _phase_flags("sft", device, total_steps, max_time, max_tokens, amp, micro_b, accum_steps)
    settings = resolve_settings(config, source, flags, print_config)
    init = init_from or Path(settings.checkpoints_dir) / "pretrain" / "best.pt"
    _summary([_run("sft", config, source, flags, False, resume, no_resume, run_id, init_from=_require_init(init, settings))])


def _require_init(init: Path, settings) -> Path:
    if not init.is_file() and not (Path(settings.checkpoints_dir) / "sft" / "latest.pt").is_file():
        raise FileNotFoundError(
            f"SFT starts from pretrained weights, but {init} does not exist. Run `ngpt train pretrain` first, "
            "or pass --init-from PATH."
        )
    return init


@app.command()
def pipeline(
    config: ConfigOpt = None, source: SourceOpt = None, no_resume: NoResumeOpt = False, run_id: RunIdOpt = None,
    device: DeviceOpt = None, print_config: PrintConfigOpt = False,
) -> None:
    """Pretrain, then SFT initialised from pretrain's best.pt. Re-running resumes where it stopped."""
    from ngpt.train.loop import run_phase

    flags = {"pretrain": {"device": device}, "sft": {"device": device}}
    settings = resolve_settings(config, source, flags, print_config)
    raw = _raw_overrides(config, flags)
    first = run_phase(settings, "pretrain", raw_overrides=raw, no_resume=no_resume, run_id=run_id and f"{run_id}-pretrain")
    if first.best is None:
        raise RuntimeError("pretrain produced no best.pt (no evaluation ran); cannot start SFT.")
    second = run_phase(settings, "sft", raw_overrides=raw, no_resume=no_resume, init_from=first.best,
                       run_id=run_id and f"{run_id}-sft")
    _summary([first, second])
