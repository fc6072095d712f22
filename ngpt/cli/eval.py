"""`ngpt eval bpb|tasks`: bits per byte on any text, and benchmarks scored as lm-evaluation-harness scores them.

    ngpt eval bpb --ckpt checkpoints/best.pt --text notes.txt --text ../shared/data/gutenberg
    ngpt eval bpb --ckpt checkpoints/best.pt --cache wikitext --split val [--stride 128]
    ngpt eval tasks --ckpt checkpoints/best.pt -c configs/eval-offline.json
    ngpt eval tasks --ckpt checkpoints/sft/ --tasks piqa,arc_easy --shots 5 --limit 200 --chat

Each prints the plan (checkpoint, model, device, data, sizes), a progress bar, a table, writes
eval.json beside the checkpoint, and ends with one JSON line. The work is in ngpt.eval.runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from ngpt.cli.common import CkptOpt, ConfigOpt, PrintConfigOpt, ThreadsOpt, resolve_settings, setting_help
from ngpt.console import console, kv_table, table
from ngpt.settings import PRETRAIN_SOURCES, SettingsError

app = typer.Typer(no_args_is_help=True)

DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu) | cpu | cuda | mps.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help=setting_help("eval.batch_size"))]


def _model_rows(model, state: dict, path: Path) -> dict:
    return {"checkpoint": f"{path} ({state.get('phase', '?')}, step {state.get('step', '?')})",
            "model": f"{model.cfg.dims_label}, {model.num_params():,} parameters",
            "device": f"{next(model.parameters()).device} (fp32, no autocast)"}


@app.command()
def bpb(
    ckpt: CkptOpt,
    text: Annotated[Optional[list[str]], typer.Option("--text", help=setting_help("eval.text") + " Repeatable.")] = None,
    cache: Annotated[Optional[str], typer.Option("--cache", help="Score a pretrain cache split instead: SOURCE (e.g. wikitext), "
                                                 "read from data.cache_dir.")] = None,
    split: Annotated[str, typer.Option("--split", help="The cache split with --cache: val or train.")] = "val",
    stride: Annotated[Optional[int], typer.Option("--stride", help=setting_help("eval.stride"))] = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Bits per byte and loss per token of a checkpoint over the whole of some text (every token once)."""
    from ngpt.eval.progress import rich_tracker
    from ngpt.eval.runner import bpb_record, load_model, write_eval_json
    from ngpt.eval.text import cache_stream, text_stream

    settings = resolve_settings(config, None, {"eval": {"text": text, "stride": stride, "batch_size": batch_size}},
                                print_config)
    if cache is not None and text:
        raise SettingsError("pass --text or --cache, not both")
    if cache is not None and cache not in PRETRAIN_SOURCES:
        raise SettingsError(f"--cache {cache}: bits/byte reads a pretrain cache; choose one of {', '.join(PRETRAIN_SOURCES)}")
    if split not in ("val", "train"):
        raise SettingsError(f"--split {split}: choose val or train")
    if threads is not None:
        torch.set_num_threads(threads)
    ev = settings.eval
    model, tok, state, path = load_model(ckpt, device)
    if cache is not None:
        ids, docs = cache_stream(tok, settings.data.cache_dir, cache, split)
        source = f"cache {Path(settings.data.cache_dir) / 'pretrain' / cache}/{split}"
    else:
        ids, docs = text_stream(tok, ev.text)
        source = ", ".join(ev.text)
    console.print(kv_table("eval bpb", {**_model_rows(model, state, path), "text": source, "documents": docs,
                                        "tokens": len(ids),
                                        "windows": f"{model.cfg.seq_len} tokens" + (f", stride {ev.stride}" if ev.stride else
                                                                                     ", non-overlapping"),
                                        "batch": ev.batch_size}))
    with rich_tracker(" windows/s") as track:
        record = bpb_record(model, tok, ids, docs=docs, source=source, stride=ev.stride, batch_size=ev.batch_size,
                            progress=track)
    console.print(table("bits per byte", ("text", "bits/byte", "loss/token (nats)", "tokens", "bytes", "tokens/s"),
                        [(source, record["bpb"], record["loss"], record["tokens"], record["bytes"], record["tokens_per_s"])]))
    out = write_eval_json(path, state, {"bpb": record})
    console.print(f"wrote {out}")
    print(json.dumps({"mode": "bpb", "checkpoint": str(path), **record}))


def parse_task_data(pairs: list[str] | None) -> dict[str, str]:
    """`--task-data NAME=PATH` flags → {NAME: PATH} (names are checked against the registry later)."""
    out = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SettingsError(f"--task-data expects NAME=PATH (e.g. piqa=../shared/data/eval/piqa), got {pair!r}")
        out[name] = path
    return out


@app.command()
def tasks(
    ckpt: CkptOpt,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help=setting_help("eval.tasks") + " Comma-separated.")] = None,
    shots: Annotated[Optional[int], typer.Option("--shots", help=setting_help("eval.shots"))] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help=setting_help("eval.limit"))] = None,
    batch_size: BatchOpt = None,
    task_data: Annotated[Optional[list[str]], typer.Option("--task-data", help="NAME=PATH: " + setting_help("eval.task_data")
                                                           + " Repeatable.")] = None,
    chat: Annotated[Optional[bool], typer.Option("--chat/--no-chat", help=setting_help("eval.chat"))] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help=setting_help("eval.seed"))] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
) -> None:
    """Benchmarks (piqa, arc_easy, ...) with lm-evaluation-harness's prompts and scoring: acc, acc_norm, CORE."""
    from ngpt.eval.harness import prepare_tasks
    from ngpt.eval.progress import rich_tracker
    from ngpt.eval.runner import load_model, tasks_record, write_eval_json

    names = [n.strip() for n in tasks.split(",") if n.strip()] if tasks is not None else None
    settings = resolve_settings(config, None, {"eval": {"tasks": names, "shots": shots, "limit": limit, "batch_size": batch_size,
                                                        "seed": seed, "chat": chat, "task_data": parse_task_data(task_data) or None}},
                                print_config)
    if threads is not None:
        torch.set_num_threads(threads)
    ev = settings.eval
    runs = prepare_tasks(ev.tasks, ev.task_data, ev.shots, ev.limit)  # every row read and checked before the model loads
    model, tok, state, path = load_model(ckpt, device)
    console.print(kv_table("eval tasks", {**_model_rows(model, state, path), "shots": f"{ev.shots} (seed {ev.seed})",
                                          "limit": ev.limit or "all", "batch": f"{ev.batch_size} continuations per forward",
                                          "chat": "yes: greedy reply, answer letter" if ev.chat else "no"}))
    console.print(table("tasks", ("task", "data", "split", "questions", "few-shot pool", "what"), [
        (r.task.name, r.eval.origin, r.task.eval_split, f"{len(r.questions):,} of {len(r.eval.docs):,}", r.pool_note, r.task.about)
        for r in runs]))
    with rich_tracker() as track:
        record = tasks_record(model, tok, runs, shots=ev.shots, seed=ev.seed, batch_size=ev.batch_size, chat=ev.chat,
                              progress=track)
    console.print(results_table(record))
    out = write_eval_json(path, state, record)
    console.print(f"wrote {out}")
    print(json.dumps({"mode": "tasks", "checkpoint": str(path), **record}))


def results_table(record: dict):
    from ngpt.eval.summary import headline, task_rows

    columns, rows = task_rows(record)
    return table(headline(record), columns, rows)
