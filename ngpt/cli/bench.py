"""`ngpt bench speed|sweep`: how fast training runs here; the overnight config sweep (not yet).

    ngpt bench speed --train
    ngpt bench speed --train --compare transformers --amp true --amp-dtype bf16
    ngpt bench speed --train --config configs/pretrain.json --micro-b 8 --compile

`speed` prints the plan, a result table, and as its LAST stdout line one JSON object (for scripts:
`ngpt bench speed --train | tail -1 | jq .ours.tokens_per_s`).
"""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ngpt.cli.common import ConfigOpt, PrintConfigOpt, resolve_settings
from ngpt.console import console, error_panel, kv_table, table

if TYPE_CHECKING:
    from ngpt.bench.speed import SpeedPlan, TrainSpeedReport

app = typer.Typer(no_args_is_help=True)


class Compare(str, Enum):
    transformers = "transformers"


class Amp(str, Enum):
    auto = "auto"
    true = "true"
    false = "false"


class AmpDtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"


@app.command()
def speed(
    train: Annotated[bool, typer.Option("--train", help="Time full training steps (forward, backward, AdamW).")] = False,
    compare: Annotated[
        Optional[Compare], typer.Option(help="Also time this implementation of the same model, in the same run.")
    ] = None,
    config: ConfigOpt = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Vocabulary size V (default model.vocab_size).")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Context length T (default model.seq_len).")] = None,
    n_embd: Annotated[Optional[int], typer.Option(help="Width C (default model.n_embd).")] = None,
    n_layer: Annotated[Optional[int], typer.Option(help="Blocks L (default model.n_layer).")] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Heads H (default model.n_head).")] = None,
    micro_b: Annotated[int, typer.Option(min=1, help="Sequences per step (micro_B).")] = 4,
    amp: Annotated[Optional[Amp], typer.Option(help="Autocast: auto | true | false (default pretrain.amp).")] = None,
    amp_dtype: Annotated[
        Optional[AmpDtype], typer.Option(help="Autocast dtype: auto | bf16 | fp16 (default pretrain.amp_dtype).")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N | mps (default pretrain.device).")] = None,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Untimed steps first (allocator, kernels, compile).")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps; the median step gives tokens/s.")] = 5,
    activation_checkpointing: Annotated[
        Optional[bool],
        typer.Option("--activation-checkpointing/--no-activation-checkpointing", help="Recompute blocks in backward."),
    ] = None,
    compile: Annotated[
        Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model(s) (both, when comparing).")
    ] = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Tokens/s and MFU (against a matmul peak measured here) of training steps on synthetic batches."""
    overrides = {
        "model": {"vocab_size": vocab_size, "seq_len": seq_len, "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head},
        "pretrain": {
            "amp": amp.value if amp else None,
            "amp_dtype": amp_dtype.value if amp_dtype else None,
            "device": device,
            "activation_checkpointing": activation_checkpointing,
            "compile": compile,
        },
    }
    s = resolve_settings(config, None, overrides, print_config)
    if not train:
        # The mode flag is required so that `--decode` (the inference issue) can sit beside it.
        error_panel("Say what to time: --train (full training steps). Decode speed lands with the inference issue.",
                    "no mode")
        raise typer.Exit(2)
    from ngpt.bench.speed import SpeedPlan, run_train_speed  # torch: only when a benchmark runs
    from ngpt.device import resolve_device, resolve_precision

    t = s.pretrain
    dev = resolve_device(t.device)
    plan = SpeedPlan(
        model=s.model, device=dev, precision=resolve_precision(dev, t.amp, t.amp_dtype), micro_b=micro_b,
        warmup_steps=warmup_steps, steps=steps, activation_checkpointing=t.activation_checkpointing,
        compile=t.compile, lr=t.lr, weight_decay=t.weight_decay, grad_clip=t.grad_clip, seed=t.seed,
        compare=compare.value if compare else None,
    )
    console.print(plan_table(plan))
    with console.status(f"measuring the matmul peak, then timing {plan.warmup_steps} + {plan.steps} steps"):
        report = run_train_speed(plan)
    console.print(result_table(report))
    # Plain print, not Rich: the record must stay one unwrapped line, and the last one.
    print(json.dumps(report.to_json()), flush=True)


def plan_table(plan: SpeedPlan) -> Table:
    import torch

    from ngpt.bench.speed import device_name, param_count
    from ngpt.model import resolved_d_ff

    m = plan.model
    return kv_table("bench speed --train", {
        "device": f"{plan.device} ({device_name(plan.device)})"
        + (f", {torch.get_num_threads()} threads" if plan.device.type == "cpu" else ""),
        "precision": plan.precision.label,
        "dims": f"V={m.vocab_size} T={m.seq_len} C={m.n_embd} L={m.n_layer} H={m.n_head} d_ff={resolved_d_ff(m)}",
        "params": param_count(m),
        "micro_B": plan.micro_b,
        "tokens per step": plan.tokens_per_step,
        "steps": f"{plan.warmup_steps} warm-up (discarded) + {plan.steps} timed",
        "activation checkpointing": plan.activation_checkpointing,
        "compile": plan.compile,
        "compare": plan.compare or "-",
    })


def result_table(report: TrainSpeedReport) -> Table:
    peak = report.peak.flops_per_s
    rows = [("ngpt", report.ours, report.ratio)]
    if report.transformers is not None:
        rows.append(("transformers", report.transformers, 1.0))
    return table(
        f"training speed (MFU against {report.peak.label}, measured here)",
        ("model", "tokens/s", "ms/step (median)", "ms/step (best)", "MFU", "ratio vs transformers"),
        [(name, t.tokens_per_s, 1e3 * t.median_step_s, 1e3 * t.best_step_s, f"{100 * t.mfu(peak):.1f}%",
          "-" if ratio is None else f"{ratio:.2f}×") for name, t, ratio in rows],
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep() -> None:
    """(not implemented yet: the bench sweep issue)"""
    error_panel("`ngpt bench sweep` is not implemented yet; it lands with the bench sweep issue.", "not implemented")
    raise typer.Exit(2)
