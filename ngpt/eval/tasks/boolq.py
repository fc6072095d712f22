"""BoolQ (SuperGLUE): a yes/no question about a Wikipedia passage. lm-eval's `boolq`.

    "{passage}\nQuestion: {question}?\nAnswer:" → " no" | " yes"; gold = label (1 = yes); acc

Local copy: the release's dev.jsonl (question, title, answer: true/false, passage), SuperGLUE's
val.jsonl (question, passage, idx, label: 0/1) or the hub's rows of either.
"""

from __future__ import annotations

from ngpt.eval.tasks.base import ChatQuestion, Question, Task, label_index, need

CHOICES = ("no", "yes")


def to_doc(row: dict) -> dict:
    """SuperGLUE's schema (label 0/1); the release's boolean `answer` becomes label."""
    need(row, "question")
    need(row, "passage")
    if "label" not in row and "answer" in row:
        row = {**row, "label": int(need(row, "answer", bool, "true or false"))}
    label_index(need(row, "label", int, "0 (no) or 1 (yes) — or give `answer`: true/false"), [0, 1], "label")
    return row


def question(doc: dict) -> Question:
    return Question((f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",), CHOICES, doc["label"], CHOICES)


def chat(doc: dict) -> ChatQuestion:
    return ChatQuestion(f"{doc['passage']}\n{doc['question']}?", CHOICES, doc["label"])


TASKS = [Task(
    name="boolq", kind="multiple_choice", hub=("aps/super_glue", "boolq"), eval_split="validation", test_split=False,
    to_doc=to_doc, question=question, chat=chat, about="yes/no questions on a passage",
    local_hint="BoolQ's local copy is the release's dev.jsonl (question, passage, answer) or SuperGLUE's val.jsonl "
               "(question, passage, label).",
)]
