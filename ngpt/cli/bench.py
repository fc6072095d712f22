"""`ngpt bench speed|quality|sweep`: how fast training and generation run here; what a decode precision
costs in answers; the overnight config sweep.

    ngpt bench speed --train
    ngpt bench speed --train --compare transformers --amp true --amp-dtype bf16
    ngpt bench speed --train --config configs/pretrain.json --micro-b 8 --compile
    ngpt bench speed --train --against configs/classic.json          # the recipe's cost vs the 2023 one, same dims
    ngpt bench speed --decode --compare transformers                # 256 prompt + 256 new tokens, greedy
    ngpt bench speed --decode --compare llama.cpp --no-uncached      # int8 vs llama.cpp's q8_0 (the gguf extra)
    ngpt bench speed --decode --precision fp32 --threads 2 --no-uncached
    ngpt bench quality --ckpt checkpoints/best.pt                    # bf16 and int8 answers vs fp32

`speed` prints the plan, a result table, and as its LAST stdout line one JSON object (for scripts:
`ngpt bench speed --train | tail -1 | jq .ours.tokens_per_s`, `... --decode | tail -1 | jq .kv_cache_speedup`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ngpt.cli.common import CkptOpt, ConfigOpt, PrintConfigOpt, ThreadsOpt, WeightFormatEnum, resolve_settings, setting_help
from ngpt.cli.learn import learn as learn_cmd
from ngpt.cli.sweep import sweep as sweep_cmd
from ngpt.console import console, error_panel, kv_table, table
from ngpt.settings import AmpChoice, AmpDtypeChoice, OptimizerChoice, SpeedCompare, WeightFormat, read_config_file

if TYPE_CHECKING:
    from ngpt.bench.speed import DecodePlan, DecodeSpeedReport, SpeedPlan, TrainSpeedReport

app = typer.Typer(no_args_is_help=True)



@app.command()
def speed(
    train: Annotated[bool, typer.Option("--train", help="Time full training steps (forward, backward, the optimizer).")] = False,
    decode: Annotated[
        bool, typer.Option("--decode", help="Time batch-1 greedy generation, with and without the KV cache.")
    ] = False,
    compare: Annotated[
        Optional[SpeedCompare], typer.Option(help="Also time this implementation of the same model, in the same run.")
    ] = None,
    against: Annotated[
        Optional[Path], typer.Option(help="--train: also time this config's recipe (model options, optimizer settings) "
                                          "at the same dims, step by step in alternation, e.g. configs/classic.json.")
    ] = None,
    config: ConfigOpt = None,
    vocab_size: Annotated[Optional[int], typer.Option(help=setting_help("model.vocab_size"))] = None,
    seq_len: Annotated[Optional[int], typer.Option(help=setting_help("model.seq_len"))] = None,
    n_embd: Annotated[Optional[int], typer.Option(help=setting_help("model.n_embd"))] = None,
    n_layer: Annotated[Optional[int], typer.Option(help=setting_help("model.n_layer"))] = None,
    n_head: Annotated[Optional[int], typer.Option(help=setting_help("model.n_head"))] = None,
    device: Annotated[Optional[str], typer.Option(help=setting_help("pretrain.device"))] = None,
    threads: ThreadsOpt = None,
    micro_b: Annotated[Optional[int], typer.Option(min=1, help="--train: sequences per micro-batch (micro_B) [default: the config's pretrain.micro_batch].")] = None,
    accum_steps: Annotated[Optional[int], typer.Option(min=1, help="--train: micro-batches per timed optimizer step [default: the config's pretrain.accum_steps].")] = None,
    optimizer: Annotated[Optional[OptimizerChoice], typer.Option(help="--train: " + setting_help("pretrain.optimizer"))] = None,
    amp: Annotated[Optional[AmpChoice], typer.Option(help="--train: " + setting_help("pretrain.amp"))] = None,
    amp_dtype: Annotated[
        Optional[AmpDtypeChoice], typer.Option(help="--train: " + setting_help("pretrain.amp_dtype"))
    ] = None,
    warmup_steps: Annotated[
        Optional[int], typer.Option(min=0, help="--train: untimed steps first (allocator, kernels, compile) [default 2].")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="--train: timed steps; the median gives tokens/s [default 5].")] = None,
    activation_checkpointing: Annotated[
        Optional[bool],
        typer.Option("--activation-checkpointing/--no-activation-checkpointing", help="--train: " + setting_help("pretrain.activation_checkpointing")),
    ] = None,
    compile: Annotated[
        Optional[bool], typer.Option("--compile/--no-compile", help="--train: torch.compile the model (both when comparing); pretrain.compile's auto is eager here, as a few steps never repay a compile")
    ] = None,
    precision: Annotated[
        Optional[WeightFormat],
        typer.Option(help="--decode: weights auto | fp32 | bf16 | fp16 | int8 (auto: what decodes fastest here) [default auto]."),
    ] = None,
    prompt_tokens: Annotated[Optional[int], typer.Option(min=1, help="--decode: prompt length [default 256].")] = None,
    new_tokens: Annotated[Optional[int], typer.Option(min=1, help="--decode: tokens generated per run [default 256].")] = None,
    repeats: Annotated[Optional[int], typer.Option(min=1, help="--decode: timed runs each; the median gives tokens/s [default 3].")] = None,
    uncached: Annotated[
        Optional[bool], typer.Option("--uncached/--no-uncached", help="--decode: also time without the KV cache [default on].")
    ] = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Tokens/s of training steps (with MFU against a matmul peak measured here) or of generation."""
    overrides = {
        "model": {"vocab_size": vocab_size, "seq_len": seq_len, "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head},
        "pretrain": {
            "amp": amp,
            "amp_dtype": amp_dtype,
            "optimizer": optimizer,
            "device": device,
            "activation_checkpointing": activation_checkpointing,
            "compile": compile,
        },
    }
    s = resolve_settings(config, None, overrides, print_config)
    if train == decode:
        error_panel("Say what to time, one at a time: --train (full training steps) or --decode (generation).",
                    "no mode" if not train else "two modes")
        raise typer.Exit(2)
    train_only = {"--micro-b": micro_b, "--accum-steps": accum_steps, "--optimizer": optimizer, "--amp": amp, "--amp-dtype": amp_dtype, "--warmup-steps": warmup_steps,
                  "--steps": steps, "--activation-checkpointing": activation_checkpointing, "--compile": compile,
                  "--against": against}
    decode_only = {"--precision": precision, "--prompt-tokens": prompt_tokens, "--new-tokens": new_tokens,
                   "--repeats": repeats, "--uncached": uncached}
    wrong = [flag for flag, value in (decode_only if train else train_only).items() if value is not None]
    if wrong:
        mode, other = ("--train", "--decode") if train else ("--decode", "--train")
        error_panel(f"{', '.join(wrong)} only apply to {other}; drop them from this {mode} run.", "flag for the other mode")
        raise typer.Exit(2)
    import torch  # only when a benchmark runs

    from ngpt.device import resolve_device, resolve_precision

    if threads is not None:
        torch.set_num_threads(threads)
    t = s.pretrain
    dev = resolve_device(t.device)
    if decode:
        from ngpt.bench.speed import DecodePlan, run_decode_speed
        from ngpt.inference import choose_weights

        plan = DecodePlan(
            model=s.model, device=dev, precision=choose_weights(dev, precision or "auto"),
            prompt_tokens=prompt_tokens or 256, new_tokens=new_tokens or 256, repeats=repeats or 3,
            uncached=True if uncached is None else uncached, seed=t.seed, compare=compare,
        )
        plan.check()
        console.print(decode_plan_table(plan))
        with console.status(f"timing {plan.repeats} generations of {plan.new_tokens} tokens each, per implementation"):
            report = run_decode_speed(plan)
        console.print(decode_result_table(report))
    else:
        from ngpt.bench.speed import Recipe, SpeedPlan, run_train_speed

        recipe = None
        if against is not None:
            # This run's --config under the other file and the same flags on top, so only what that file sets
            # differs; its dims are then this run's, since a recipe is compared at one shape.
            under = None if config is None else (str(config), read_config_file(config))
            other = resolve_settings(against, None, overrides, False, base=under)
            dims = {k: getattr(s.model, k) for k in ("vocab_size", "seq_len", "n_embd", "n_layer", "n_head", "d_ff")}
            recipe = Recipe(str(against), other.model.model_copy(update=dims), other.pretrain)
        plan = SpeedPlan(
            model=s.model, device=dev, precision=resolve_precision(dev, t.amp, t.amp_dtype), micro_b=micro_b or t.micro_batch,  # the step training would take
            warmup_steps=2 if warmup_steps is None else warmup_steps, steps=steps or 5,
            activation_checkpointing=t.activation_checkpointing, compile=t.compile is True, optim=t,  # auto: eager (a few steps)
            accum_steps=accum_steps or t.accum_steps, seed=t.seed, compare=compare, against=recipe,
        )
        console.print(plan_table(plan))
        with console.status(f"measuring the matmul peak, then timing {plan.warmup_steps} + {plan.steps} steps"):
            report = run_train_speed(plan)
        console.print(result_table(report))
    # Plain print, not Rich: the record must stay one unwrapped line, and the last one.
    print(json.dumps(report.to_json()), flush=True)


def plan_table(plan: SpeedPlan) -> Table:
    from ngpt.model import param_count
    from ngpt.device import device_label
    from ngpt.train.plan import architecture_label

    m = plan.model
    return kv_table("bench speed --train", {
        "device": device_label(plan.device),
        "precision": plan.precision.label,
        "dims": m.dims_label,
        "params": param_count(m),
        "micro_B": plan.micro_b,
        "accum_steps": plan.accum_steps,
        "optimizer": plan.optim.optimizer,
        "architecture": architecture_label(m),
        "tokens per step": plan.tokens_per_step,
        "steps": f"{plan.warmup_steps} warm-up (discarded) + {plan.steps} timed",
        "activation checkpointing": plan.activation_checkpointing,
        "compile": plan.compile,
        "compare": plan.compare or "-",
        "against": "-" if plan.against is None else f"{plan.against.name} ({plan.against.optim.optimizer}, "
                                                     f"{architecture_label(plan.against.model)})",
    })


def result_table(report: TrainSpeedReport) -> Table:
    peak = report.peak.flops_per_s
    rows = [("ngpt", report.ours, report.ratio, report.against_ratio)]
    if report.transformers is not None:
        rows.append(("transformers", report.transformers, 1.0, None))
    if report.against is not None:
        rows.append((f"ngpt, {report.plan.against.name}", report.against, None, 1.0))
    columns = ["model", "tokens/s", "ms/step (median)", "ms/step (best)", "MFU"]
    columns += ["ratio vs transformers"] * (report.transformers is not None) + ["ratio vs --against"] * (report.against is not None)

    def ratios(vs_transformers, vs_against) -> list[str]:
        cells = [vs_transformers] * (report.transformers is not None) + [vs_against] * (report.against is not None)
        return ["-" if r is None else f"{r:.2f}×" for r in cells]

    return table(
        f"training speed (MFU against {report.peak.label}, measured here)", tuple(columns),
        [(name, t.tokens_per_s, 1e3 * t.median_step_s, 1e3 * t.best_step_s, f"{100 * t.mfu(peak):.1f}%", *ratios(r, a))
         for name, t, r, a in rows],
    )


def decode_plan_table(plan: DecodePlan) -> Table:
    from ngpt.model import param_count
    from ngpt.device import device_label
    from ngpt.inference import WEIGHT_LABELS

    m = plan.model
    return kv_table("bench speed --decode", {
        "device": device_label(plan.device),
        "precision": WEIGHT_LABELS[plan.precision],
        "dims": m.dims_label,
        "params": param_count(m),
        "generation": f"batch 1, greedy, {plan.prompt_tokens} prompt tokens + {plan.new_tokens} new",
        "runs": f"1 short warm-up (discarded) + {plan.repeats} timed, each implementation in turn",
        "without KV cache": "timed too" if plan.uncached else "-",
        "compare": plan.compare or "-",
    })


def decode_result_table(report: DecodeSpeedReport) -> Table:
    import statistics

    from ngpt.device import dtype_name

    theirs = f"transformers ({dtype_name(report.plan.transformers_dtype)} weights)"
    ours_name = f"ngpt ({report.plan.precision})"
    rows = [(ours_name, report.ours, "ngpt"), (f"{ours_name}, no KV cache", report.uncached, None),
            (theirs, report.transformers, None), (f"llama.cpp ({report.plan.llama_cpp_dtype})", report.llama_cpp, "llama.cpp")]
    ours = report.ours.tokens_per_s
    limit = report.limit

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def share(key: str | None, t) -> str:  # decode tokens/s as a share of read bandwidth / weight bytes per token
        if limit is None or key is None:
            return "-"
        return f"{100 * limit.share(key, t):.0f} % of {limit.tokens_per_s(key):,.0f}"

    title = "generation speed (new tokens / whole run, prefill included; median run)"
    if limit is not None:
        title += f"; limit = {limit.bandwidth.bytes_per_s / 1e9:.1f} GB/s read here / weight bytes per token"
    return table(
        title,
        ("implementation", "tokens/s", "s/run", "prefill ms", "decode tokens/s", "ngpt speed-up", "decode vs limit"),
        [(name, t.tokens_per_s, statistics.median(t.run_s), cell(statistics.median(t.prefill_ms)) if t.prefill_ms else "-",
          cell(t.decode_tokens_per_s), f"{ours / t.tokens_per_s:.2f}", share(key, t)) for name, t, key in rows if t is not None],
    )


@app.command()
def quality(
    ckpt: CkptOpt,
    precision: Annotated[
        Optional[list[WeightFormatEnum]], typer.Option(help="Precision(s) to compare with fp32 (repeat the flag) [default bf16, int8].")
    ] = None,
    prompts: Annotated[Path, typer.Option(help="Chat jsonl whose first user messages are the prompts.")] = Path("data/primer.jsonl"),
    n: Annotated[int, typer.Option(min=1, help="How many prompts.")] = 30,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest greedy reply per prompt.")] = 48,
    threads: ThreadsOpt = None,
) -> None:
    """How much a decode precision changes a checkpoint's answers: KL and top-1 agreement with fp32, identical replies."""
    import torch

    from ngpt.bench.quality import QualityPlan, run_quality
    from ngpt.inference import choose_weights

    if threads is not None:
        torch.set_num_threads(threads)
    chosen = tuple(p.value for p in precision) if precision else ("bf16", "int8")
    bad = [p for p in chosen if p in ("auto", "fp32")]
    if bad:
        raise typer.BadParameter("compare concrete precisions other than fp32 (bf16, fp16, int8)", param_hint="--precision")
    for p in chosen:
        choose_weights(torch.device("cpu"), p)  # a clear error for one this CPU cannot run
    plan = QualityPlan(ckpt, prompts, chosen, n, max_new_tokens)
    console.print(kv_table("bench quality", {
        "checkpoint": ckpt, "prompts": f"first user message of {n} conversations in {prompts}",
        "reference": "fp32, greedy replies", "compared": ", ".join(chosen), "device": "cpu",
    }))
    with console.status(f"answering {n} prompts in fp32 and {', '.join(chosen)}"):
        rows = run_quality(plan)
    console.print(table(
        "answers vs fp32 (reply positions, teacher-forced on fp32's greedy reply)",
        ("precision", "mean KL (nats/token)", "top-1 agreement", "identical greedy replies", "reply tokens"),
        [(r.precision, f"{r.mean_kl:.4g}", f"{100 * r.top1_agreement:.2f} %", f"{r.identical_replies} / {r.prompts}",
          r.reply_tokens) for r in rows],
    ))
    print(json.dumps({"mode": "quality", "checkpoint": str(ckpt), "rows": [r.to_json() for r in rows]}))


app.command("sweep")(sweep_cmd)
app.command("learn")(learn_cmd)
