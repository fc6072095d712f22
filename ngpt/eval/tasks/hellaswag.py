"""HellaSwag: the most plausible ending of an activity description. lm-eval's `hellaswag`.

    query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()) → " " + preprocess(ending_i)
    gold = int(label); acc, acc_norm

preprocess is lm-eval's: strip, " [title]" → ". ", drop every "[...]", one pass of "  " → " " (an
ending may keep a leading space, and so get two before it, as in lm-eval). str.capitalize also
lower-cases the rest of ctx_b, as lm-eval does. Local copy: the release's hellaswag_val.jsonl (ind,
activity_label, ctx_a, ctx_b, ctx, split, split_type, label, endings, source_id) or the hub's rows
(the same fields; label a string).
"""

from __future__ import annotations

import re

from ngpt.eval.tasks.base import ChatQuestion, Question, Task, TaskDataError, need, need_strings


def preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artefacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def to_doc(row: dict) -> dict:
    for key in ("activity_label", "ctx_a", "ctx_b"):
        need(row, key)
    endings = need_strings(row, "endings")
    label = need(row, "label", (int, str), "the index of the right ending (0-3)")
    if isinstance(label, bool) or str(label) not in [str(i) for i in range(len(endings))]:
        raise TaskDataError(f"field 'label' is {label!r}, out of range: it must be 0 .. {len(endings) - 1}")
    return row


def query(doc: dict) -> str:
    return preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())


def question(doc: dict) -> Question:
    choices = tuple(preprocess(e) for e in doc["endings"])
    return Question((query(doc),), choices, int(doc["label"]), choices)


def chat(doc: dict) -> ChatQuestion:
    return ChatQuestion(f"How does this continue? {query(doc)}", tuple(preprocess(e) for e in doc["endings"]), int(doc["label"]))


TASKS = [Task(
    name="hellaswag", kind="multiple_choice", hub=("Rowan/hellaswag", None), eval_split="validation", test_split=False,
    to_doc=to_doc, question=question, chat=chat, about="plausible ending of an activity, 4 choices",
    local_hint="HellaSwag's local copy is the release's hellaswag_val.jsonl or the hub's rows (activity_label, ctx_a, "
               "ctx_b, endings, label).",
)]
