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

from ngpt.cli.common import ConfigOpt, PrintConfigOpt, SourceOpt, resolve_settings, setting_help
from ngpt.console import console, table
from ngpt.settings import AmpChoice

app = typer.Typer(no_args_is_help=True)


def phase_help(name: str) -> str:
    """A flag of both `train pretrain` and `train sft`: it sets that phase's field."""
    return setting_help(f"pretrain.{name}", label=f"pretrain|sft.{name}")


ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Resume from this checkpoint (default: the phase's latest.pt).")]
NoResumeOpt = Annotated[bool, typer.Option("--no-resume", help="Start fresh even if the phase has a latest.pt.")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Name of runs/<run_id>/ (default: timestamp-phase).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help=phase_help("device"))]
StepsOpt = Annotated[Optional[int], typer.Option("--total-steps", help=phase_help("total_steps"))]
MaxTimeOpt = Annotated[Optional[str], typer.Option("--max-time", help=phase_help("max_time"))]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help=phase_help("max_tokens"))]
AmpOpt = Annotated[Optional[AmpChoice], typer.Option("--amp", help=phase_help("amp"))]
MicroBOpt = Annotated[Optional[int], typer.Option("--micro-b", help=phase_help("micro_batch"))]
AccumOpt = Annotated[Optional[int], typer.Option("--accum-steps", help=phase_help("accum_steps"))]


def _phase_flags(phase: str, device, total_steps, max_time, max_tokens, amp, micro_b, accum_steps) -> dict:
    return {phase: {"device": device, "total_steps": total_steps, "max_time": max_time, "max_tokens": max_tokens,
                    "amp": amp, "micro_batch": micro_b, "accum_steps": accum_steps}}


def _summary(results) -> None:
    rows = []
    for r in results:
        m = r.metrics
        rows.append((r.phase, r.step, f"{m.get('train_loss') or float('nan'):.4f}", f"{m.get('val_pretrain_loss', float('nan')):.4f}",
                     f"{m.get('val_sft_loss', float('nan')):.4f}", str(r.best or "-"), str(r.run_dir / "report.md")))
    console.print(table("done", ("phase", "step", "train_loss", "val_pretrain", "val_sft", "best", "report"), rows))


@app.command()
def pretrain(
    config: ConfigOpt = None, source: SourceOpt = None, resume: ResumeOpt = None, no_resume: NoResumeOpt = False,
    run_id: RunIdOpt = None, device: DeviceOpt = None, total_steps: StepsOpt = None, max_time: MaxTimeOpt = None,
    max_tokens: MaxTokensOpt = None, amp: AmpOpt = None, micro_b: MicroBOpt = None, accum_steps: AccumOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Pretrain on the pretrain mix (auto-resumes from checkpoints/pretrain/latest.pt)."""
    from ngpt.train.loop import run_phase  # torch + model import only when training
    from ngpt.train.pipeline import raw_overrides

    flags = _phase_flags("pretrain", device, total_steps, max_time, max_tokens, amp, micro_b, accum_steps)
    settings = resolve_settings(config, source, flags, print_config)
    _summary([run_phase(settings, "pretrain", raw_overrides=raw_overrides(config, flags), resume=resume,
                        no_resume=no_resume, run_id=run_id)])


@app.command()
def sft(
    config: ConfigOpt = None, source: SourceOpt = None, resume: ResumeOpt = None, no_resume: NoResumeOpt = False,
    init_from: Annotated[Optional[Path], typer.Option("--init-from", help="Weights to start from (default: checkpoints/pretrain/best.pt).")] = None,
    run_id: RunIdOpt = None, device: DeviceOpt = None, total_steps: StepsOpt = None, max_time: MaxTimeOpt = None,
    max_tokens: MaxTokensOpt = None, amp: AmpOpt = None, micro_b: MicroBOpt = None, accum_steps: AccumOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Supervised fine-tuning on the SFT mix, starting from the pretrained best.pt."""
    from ngpt.train.loop import run_phase
    from ngpt.train.pipeline import raw_overrides, sft_init

    flags = _phase_flags("sft", device, total_steps, max_time, max_tokens, amp, micro_b, accum_steps)
    settings = resolve_settings(config, source, flags, print_config)
    _summary([run_phase(settings, "sft", raw_overrides=raw_overrides(config, flags), resume=resume, no_resume=no_resume,
                        init_from=sft_init(settings, init_from), run_id=run_id)])


@app.command()
def pipeline(
    config: ConfigOpt = None, source: SourceOpt = None, no_resume: NoResumeOpt = False, run_id: RunIdOpt = None,
    device: DeviceOpt = None, print_config: PrintConfigOpt = False,
) -> None:
    """Pretrain, then SFT initialised from pretrain's best.pt. Re-running resumes where it stopped."""
    from ngpt.train.pipeline import raw_overrides, run_pipeline

    flags = {"pretrain": {"device": device}, "sft": {"device": device}}
    settings = resolve_settings(config, source, flags, print_config)
    _summary(run_pipeline(settings, raw_overrides=raw_overrides(config, flags), no_resume=no_resume, run_id=run_id))
