"""PIQA (physical commonsense): which of two solutions reaches the goal. lm-eval's `piqa`.

    "Question: {goal}\nAnswer:" → " {sol1}" | " {sol2}"; gold = label (0 = sol1); acc, acc_norm

Local copy: the release's valid.jsonl (goal, sol1, sol2) with valid-labels.lst beside it (one 0/1
per line; train.jsonl + train-labels.lst likewise), or the hub's rows with `label` inline.
"""

from __future__ import annotations

from pathlib import Path

from ngpt.eval.taskdata import read_labels, read_rows
from ngpt.eval.tasks.base import ChatQuestion, Question, Row, Task, label_index, need


def read(path: Path) -> list[Row]:
    """Rows of a jsonl file, with the labels of `<stem>-labels.lst` beside it attached as `label`."""
    rows = read_rows(path)
    labels_file = path.with_name(f"{path.stem}-labels.lst")
    if labels_file.is_file():
        labels = read_labels(labels_file, len(rows))
        rows = [({**row, "label": y} if isinstance(row, dict) else row, where) for (row, where), y in zip(rows, labels)]
    return rows


def to_doc(row: dict) -> dict:
    for key in ("goal", "sol1", "sol2"):
        need(row, key)
    label_index(need(row, "label", int, "0 or 1"), [0, 1], "label")
    return row


def question(doc: dict) -> Question:
    choices = (doc["sol1"], doc["sol2"])
    return Question((f"Question: {doc['goal']}\nAnswer:",), choices, doc["label"], choices)


def chat(doc: dict) -> ChatQuestion:
    return ChatQuestion(doc["goal"], (doc["sol1"], doc["sol2"]), doc["label"])


TASKS = [Task(
    name="piqa", kind="multiple_choice", hub=("baber/piqa", None), eval_split="validation", test_split=False,
    to_doc=to_doc, question=question, chat=chat, read=read, extensions=(".jsonl",),
    about="physical commonsense, 2 choices",
    local_hint="PIQA's local copy is valid.jsonl (goal, sol1, sol2) with valid-labels.lst (one 0/1 per line) beside it, "
               "or rows with a `label` field.",
)]
