"""Eval results as rows of text: what the terminal table (`ngpt eval tasks`) and report.md (pipeline) show.

    columns, rows = task_rows(record)      # record: the "tasks"/"core" JSON of ngpt.eval.harness
    headline(record)                       # "CORE (mean centered) +0.0123 · ChatCORE ..."
"""

from __future__ import annotations


def task_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    chat = any("chat_acc" in r for r in record["tasks"].values())
    columns = ["task", "n", "acc", "acc_norm", "baseline", "centered"] + (["chat acc", "chat centered"] if chat else []) + ["ex/s"]
    rows = []
    for name, r in record["tasks"].items():
        if "perplexity" in r:
            norm = f"ppl {r['perplexity']:.4g}"  # LAMBADA has no choices to normalise; its second number is perplexity
        else:
            norm = "—" if r["acc_norm"] is None else f"{r['acc_norm']:.4f}"
        row = [name, f"{r['n']:,}", f"{r['acc']:.4f} ± {r['acc_stderr']:.4f}", norm, f"{r['baseline']:.4f}",
               f"{r['centered']:+.4f}"]
        if chat:
            row += [f"{r['chat_acc']:.4f}", f"{r['chat_centered']:+.4f}"] if "chat_acc" in r else ["—", "—"]
        rows.append(row + [f"{r['examples_per_s']:,.1f}" if r.get("examples_per_s") else "—"])
    return columns, rows


def headline(record: dict) -> str:
    text = f"CORE (mean centered accuracy) {record['core']:+.4f}" if record.get("core") is not None else "no tasks"
    if record.get("chatcore") is not None:
        text += f" · ChatCORE {record['chatcore']:+.4f}"
    return text
