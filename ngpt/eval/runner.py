"""What `ngpt eval bpb|tasks` and the end of `ngpt train pipeline` call: a checkpoint in, numbers and eval.json out.

    model, tok, state, path = load_model("checkpoints/best.pt", "auto")
    record = bpb_record(model, tok, ids, docs=3, source="notes.txt", stride=None, batch_size=8)
    record = tasks_record(model, tok, runs, shots=0, seed=1234, batch_size=16)
    write_eval_json(path, state, {"bpb": record})        # checkpoints/.../eval.json, beside the checkpoint
    record = evaluate_settings(settings, path)           # eval.text and eval.tasks of the settings (pipeline)

The model is scored in fp32 without autocast (the numbers lm-eval gives for the fp32 export), on
`device` (auto: cuda > mps > cpu).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ngpt.checkpoint import find_checkpoint, load_for_inference
from ngpt.device import resolve_device
from ngpt.eval.bpb import stream_bpb, windows
from ngpt.eval.harness import Tracker, TaskRun, no_progress, prepare_tasks, run_tasks
from ngpt.eval.text import text_stream
from ngpt.io_utils import atomic_write_text
from ngpt.model import GPT
from ngpt.settings import Settings
from ngpt.tokenizer import Tokenizer

EVAL_JSON = "eval.json"


def load_model(ckpt: str | Path, device: str = "auto") -> tuple[GPT, Tokenizer, dict, Path]:
    """(fp32 model in eval mode on the device, its tokenizer, the checkpoint without weights, the .pt file)."""
    path = find_checkpoint(ckpt)
    model, tok, state = load_for_inference(path, resolve_device(device))
    return model.float(), tok, state, path


def bpb_record(model: GPT, tok: Tokenizer, ids: torch.Tensor, *, docs: int, source: str, stride: int | None,
               batch_size: int, progress: Tracker = no_progress) -> dict:
    """Bits per byte and loss per token over every target of `ids` (ngpt.eval.bpb.stream_bpb), as JSON."""
    spans = windows(len(ids), model.cfg.seq_len, stride)
    advance = progress("bits/byte", len(spans))
    t0 = time.perf_counter()
    acc = stream_bpb(model, ids, torch.from_numpy(tok.token_byte_lengths()), stride=stride, batch_size=batch_size,
                     on_window=advance)
    seconds = time.perf_counter() - t0
    return {**acc.to_json(), "documents": docs, "windows": len(spans), "stride": stride or model.cfg.seq_len,
            "source": source, "seconds": round(seconds, 3),
            "tokens_per_s": round(acc.tokens / seconds, 1) if seconds else None}


def tasks_record(model: GPT, tok: Tokenizer, runs: list[TaskRun], *, shots: int, seed: int, batch_size: int,
                 chat: bool = False, progress: Tracker = no_progress) -> dict:
    return run_tasks(model, tok, runs, shots=shots, seed=seed, batch_size=batch_size, chat=chat,
                     progress=progress).to_json()


def eval_json_path(ckpt: Path) -> Path:
    return ckpt.parent / EVAL_JSON


def write_eval_json(ckpt: Path, state: dict, sections: dict) -> Path:
    """Merge `sections` into eval.json beside `ckpt` (a file left by another checkpoint or step is replaced)."""
    path = eval_json_path(ckpt)
    head = {"checkpoint": str(ckpt), "phase": state.get("phase"), "step": state.get("step"),
            "tokenizer_sha256": state.get("tokenizer_sha256")}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    same = isinstance(old, dict) and all(old.get(k) == v for k, v in head.items())
    atomic_write_text(path, json.dumps({**(old if same else {}), **head, **sections}, indent=2) + "\n")
    return path


def check_settings(settings: Settings) -> list[TaskRun]:
    """Read and check everything eval.text / eval.tasks name (before a pipeline trains): the task runs."""
    ev = settings.eval
    if ev.text:
        from ngpt.eval.text import read_document, text_files

        for f in text_files(ev.text):
            read_document(f)
    return prepare_tasks(ev.tasks, ev.task_data, ev.shots, ev.limit) if ev.tasks else []


def evaluate_settings(settings: Settings, ckpt: str | Path, runs: list[TaskRun] | None = None,
                      progress: Tracker = no_progress, device: str = "auto") -> dict:
    """eval.text (bits/byte) and eval.tasks of `settings` on a checkpoint; writes eval.json; the sections."""
    ev = settings.eval
    model, tok, state, path = load_model(ckpt, device)
    sections: dict = {}
    if ev.text:
        ids, docs = text_stream(tok, ev.text)
        sections["bpb"] = bpb_record(model, tok, ids, docs=docs, source=", ".join(ev.text), stride=ev.stride,
                                     batch_size=ev.batch_size, progress=progress)
    if ev.tasks:
        runs = runs if runs is not None else prepare_tasks(ev.tasks, ev.task_data, ev.shots, ev.limit)
        sections.update(tasks_record(model, tok, runs, shots=ev.shots, seed=ev.seed, batch_size=ev.batch_size,
                                     chat=ev.chat, progress=progress))
    if sections:
        write_eval_json(path, state, sections)
    return sections
