"""LAMBADA, OpenAI's version: predict a passage's last word. lm-eval's `lambada_openai`.

    context = " ".join(text.split(" ")[:-1]), continuation = " " + text.split(" ")[-1]
    acc = every continuation token is the greedy (argmax) token; perplexity = exp(-mean log P(continuation))

The last word is what follows the last single space (lm-eval splits on " ", not on any whitespace).
Local copy: lambada_test.jsonl ({"text": ...} per line; the test split is the only one).
"""

from __future__ import annotations

from ngpt.eval.tasks.base import Question, Task, TaskDataError, need


def to_doc(row: dict) -> dict:
    if " " not in need(row, "text"):
        raise TaskDataError("field 'text' has no space, so there is no last word to predict after a context")
    return row


def question(doc: dict) -> Question:
    words = doc["text"].split(" ")
    return Question((" ".join(words[:-1]),), (" " + words[-1],), 0)


TASKS = [Task(
    name="lambada_openai", kind="loglikelihood", hub=("EleutherAI/lambada_openai", "default"), eval_split="test",
    test_split=True, to_doc=to_doc, question=question, about="last word of a passage (greedy match, perplexity)",
    local_hint="LAMBADA's local copy is OpenAI's lambada_test.jsonl (one {\"text\": ...} per line).",
)]
